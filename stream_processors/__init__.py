"""The faust app: validate+route, reconcile and settle agents with their tables."""
