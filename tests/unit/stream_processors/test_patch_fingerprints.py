"""Every upstream function a framework patch copies, wraps or relies on, fingerprinted.

The patches in stream_processors/patches copy private code of faust-streaming, mode-streaming
and aiokafka, or depend on its exact behaviour. Each module's UPSTREAM names those functions;
this test holds the sha256 of each one's source (`inspect.getsource`) as it was when the patch
was verified. An upgrade that changes any of them fails here, naming what changed, until
someone re-reads the patch against the new source, re-runs its tests (each patch module's
docstring names them), and records the new fingerprint below, the new version in
stream_processors.patches.VERIFIED, pyproject.toml and constraints.txt.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import tomllib
from pathlib import Path

import pytest

from stream_processors import patches

ROOT = Path(__file__).resolve().parents[3]

# "module:qualname" -> sha256 of its source, for faust-streaming 0.15.3, mode-streaming 0.7.1,
# aiokafka 0.14.0.
FINGERPRINTS = {
    "aiokafka.consumer.consumer:AIOKafkaConsumer.__init__":
        "01506f316191f7c99c785bec915756d1560029a6fad75cba6f4da71e343a8163",
    "aiokafka.consumer.consumer:AIOKafkaConsumer.seek_to_committed":
        "f6cd85c8b70a4ccf7e862de24f6c5d985038eed3e140990f000aa4b52eda8d72",
    "aiokafka.consumer.consumer:AIOKafkaConsumer.start":
        "2f1ba70443327538800d348e61042cdedd5a5e6306f40ebe1a06dddba7494c45",
    "aiokafka.consumer.subscription_state:Assignment.state_value":
        "183fea82ef48f3e6136739948785fbf07feec2d7119b60e5e9378264ba6780de",
    "aiokafka.producer.message_accumulator:MessageAccumulator.drain_by_nodes":
        "fc995afbfc5718e2bbc40bc7078322f7e2a5b7c85df9b3cabbd14aca03201a5c",
    "aiokafka.producer.message_accumulator:MessageBatch.remaining_linger":
        "6f296891237ba25093e05675b6db72c6d34fa561c5824b981ab8893df015961f",
    "faust.serializers.codecs:get_codec":
        "d215f62a3bab24cc3660c61b7466b049482485330493e17662f7a4a307b68e91",
    "faust.serializers.codecs:json":
        "dff738e68b05adb8436a84af2bc0b8ee400c0726f4bf7009c4fa9bc715e59ff0",
    "faust.serializers.codecs:register":
        "c0695adbd9bf4cb458247854d9cd1df2b7607304cba7fcce282ffd0134bbfffc",
    "faust.streams:Stream._py_aiter":
        "3a48ee257a65435b482d51edb74f2993a67867949b1ef89b49fea893769e0614",
    "faust.tables.base:Collection._on_changelog_sent":
        "60122c86a120d82cffa95da4c22323e12d67fa82f3112f08ac7f8edde7c47826",
    "faust.tables.base:Collection.send_changelog":
        "3dd3884e1b5fc0e1612bc688b83d9318a1805ddc49700d3b6b37bade73c3905d",
    "faust.topics:Topic._on_published":
        "7cfe9ebd65964b0a9e7845853f98d58b995907b0020493fa1d2fa3a52aa29f8f",
    "faust.topics:Topic.publish_message":
        "4ce1cbc353047a36edfa0ea78ae5c542b660bda6a3a04f5b8f2d1c9919701404",
    "faust.transport.conductor:Conductor._compile_message_handler":
        "9fbc0538097aa4eca6113b99df8d17605ae72a6b5030482f041a183f4cc34df1",
    "faust.transport.conductor:ConductorCompiler.build":
        "837cf521368c1ee4b22c235a2b137f665eca03d0e3e01b5ddedb65232ee73bf2",
    "faust.transport.consumer:Consumer._drain_messages":
        "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417",
    "faust.transport.consumer:Consumer._new_offset":
        "1d2c7ea89a7ad4f1a216c1d51936e569162cd66bd56f889e13fd29c910b58eb0",
    "faust.transport.consumer:Consumer.ack":
        "5fcf41cf45153475de3790dc56fec1b83335956dc8b3bf7ff6bbb2b57627f03f",
    "faust.transport.consumer:Consumer.perform_seek":
        "0e8c130ff4b0afd82c0be9c5fd831316e10febc62c94032833911096e156d7c6",
    "faust.transport.consumer:Consumer.seek":
        "b86a9fe05f956b30cf299c787b6787c6e0349cbf1ae556f2456a1e97b15dbb22",
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._create_consumer":
        "a4dc6ba0681a298c05d60994890984fe35edee17dea101f8071da9456700c238",
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._create_worker_consumer":
        "c2701bfc3e6f6cad95c2be36d6a255a86e2c57d18d36cc1082b5fb5c482d99d7",
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread.seek_to_committed":
        "775ab0adc4b052abee204d5347a556412b1f77ed4de971adde69a55a1cb6f908",
    "faust.transport.producer:ProducerBuffer._handle_pending":
        "78d648030fd21016cc0d82ae6cc6df1cb474273195b10f133ea0ef9ac9d35f0c",
    "faust.transport.producer:ProducerBuffer._send_pending":
        "4a9d5f932b56bc6842151bfc868aec1570d53cab7ff129ece408d966ac7f7da8",
    "faust.transport.producer:ProducerBuffer.flush":
        "26fbebb124ad9c9890f19b4615585cf3eda102b61203e6aa885d3fabfda9b157",
    "faust.transport.producer:ProducerBuffer.flush_atmost":
        "4966e8c5f9b42eb97abe3f93cbc9bc566a22bdea01ae5328c5a6593414820323",
    "faust.transport.producer:ProducerBuffer.size":
        "b543a978fdece62e7d7c434eea6e842995d67cc1d3288434f5f26ad72c10a779",
    "faust.transport.producer:ProducerBuffer.wait_until_ebb":
        "758dd5744044071bbc79609fa8e5bfc339818f186bc19b723de2c4c877412e00",
    "faust.utils.json:JSONEncoder":
        "843c48dda64ae1e96fabc333a45d9dc43ab1e2bc75eaefe39323b3887a18f016",
    "faust.utils.json:on_default":
        "0e6a4bd66054526e3a9c78f4619b55325eb94217c1119d8d8ed4ffb3d8b51d82",
    "mode.utils.queues:FlowControlEvent.acquire":
        "ed0208e866e64d0b8c677054eb1e6988aea3e9cb248f81b040b30e749fb11cd6",
    "mode.utils.queues:FlowControlEvent.resume":
        "4dcdc1253fd0dcb40de18a3702503c01d21e9da7e5e55b122fb92615f27648d9",
}


def _upstream_names() -> dict[str, set[str]]:
    """Each upstream name, with the patch modules that name it."""
    named: dict[str, set[str]] = {}
    for module in patches.PATCHES:
        for name in importlib.import_module(f"{patches.__name__}.{module}").UPSTREAM:
            named.setdefault(name, set()).add(module)
    return named


def fingerprint(name: str) -> str:
    source = inspect.getsource(patches.source_object(patches.upstream(name)))
    return hashlib.sha256(source.encode()).hexdigest()


def test_every_upstream_function_a_patch_names_has_a_fingerprint() -> None:
    named = _upstream_names()
    assert set(named) == set(FINGERPRINTS), (
        f"without a fingerprint: {sorted(set(named) - set(FINGERPRINTS))}; "
        f"named by no patch: {sorted(set(FINGERPRINTS) - set(named))}")


@pytest.mark.parametrize("name", sorted(FINGERPRINTS))
def test_upstream_source_is_the_one_the_patches_were_verified_against(name: str) -> None:
    users = ", ".join(f"stream_processors/patches/{m}.py" for m in sorted(_upstream_names()
                                                                          .get(name, ())))
    assert fingerprint(name) == FINGERPRINTS[name], (
        f"{name} changed upstream: re-verify {users} against the new source (and their "
        f"tests), then record its new fingerprint here")


def test_a_patched_attribute_still_fingerprints_the_upstream_function() -> None:
    patches.install_all()
    name = "faust.transport.consumer:Consumer._new_offset"
    from faust.transport.consumer import Consumer

    from stream_processors.patches import new_offset

    assert Consumer._new_offset is new_offset.new_offset
    assert fingerprint(name) == FINGERPRINTS[name]


def _pins(lines: list[str]) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in lines:
        requirement = line.split(";")[0].split("#")[0].strip()
        if "==" in requirement:
            name, version = requirement.split("==")
            pins[name.split("[")[0].strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_pyproject_and_constraints_pin_the_verified_versions() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = _pins(project["dependencies"])
    locked = _pins((ROOT / "constraints.txt").read_text().splitlines())
    for package, version in patches.VERIFIED.items():
        assert pinned.get(package) == version, (package, pinned.get(package))
        assert locked.get(package) == version, (package, locked.get(package))
