"""Between the readers and the pipeline: `open_source` picks the reader for a folder (sources.py), and staged
residency keeps each network in memory only for its stage of an edit (residency.py)."""
