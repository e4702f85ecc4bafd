"""Payment producer library and simulators (order flow, channel gateways, merchants)."""
