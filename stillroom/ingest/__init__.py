"""Read LLM call logs, whatever their format, into one canonical record table, with secrets scrubbed.

`formats` holds one parser per log shape and the `PARSERS` table that tells them apart;
`sources` the containers (.jsonl, .jsonl.gz, .json, an llm logs.db, folders, globs);
`scrub` the secret and personal-data scrubbing; `state` what a re-run remembers;
image parts are checked, cleared of location tags and stored once as blobs by the shared
`stillroom.images` (the server stores the images it is sent the same way);
`stage` the stage itself.
"""

from stillroom.ingest.common import BadRecord, Skip
from stillroom.ingest.formats import PARSERS, parse_line, parse_object
from stillroom.ingest.sources import log_files
from stillroom.ingest.stage import IngestResult, Quarantined, ingest, run

__all__ = [
    "PARSERS", "BadRecord", "IngestResult", "Quarantined", "Skip", "ingest", "log_files", "parse_line", "parse_object",
    "run",
]
