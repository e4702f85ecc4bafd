"""Helpers the tests share (sample records, harnesses); no test imports bench or chaos code."""
