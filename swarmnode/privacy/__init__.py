"""Privacy: differential privacy of updates (dp.py), secure aggregation (secagg.py), their genesis table
(config.py). Pure: imports neither p2p nor consensus."""
