"""The statistics of an empirical privacy audit, and its canaries.

``one_run`` turns guesses about secret canaries into an epsilon lower bound (Steinke, Nasr,
Jagielski 2023); ``gaussian`` estimates client-level epsilon from canary cosines (Andrew et al.
2024); ``canaries`` and ``client_canaries`` make the canaries. Nothing here loads a model: auditing
a finished run is ``fedtune.audit``.
"""
