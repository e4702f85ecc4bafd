"""Pure domain core of the settlement pipeline: money, rules and decisions; stdlib only."""
