"""Privacy: noise calibration, cumulative accounting per client, and the privacy-budget report."""
