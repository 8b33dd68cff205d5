"""tritoncnn.reports: benchmark suites and counts (``suites``), the ``tritoncnn bench`` harness
(``bench``) and the ``tritoncnn report`` builder (``report``); ``gpu_check.sh`` runs it all on a GPU."""
