"""Write the S3 identity from the environment, then run `weed server -filer -s3`."""

import json
import os
import shutil
import sys
from pathlib import Path

weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
config = Path("/tmp/s3.json")
identity = {
    "name": "image-gen",
    "credentials": [
        {"accessKey": os.environ["S3_ACCESS_KEY"], "secretKey": os.environ["S3_SECRET_KEY"]}
    ],
    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
}
config.write_text(json.dumps({"identities": [identity]}))
os.makedirs("/data", exist_ok=True)
os.execv(
    weed,
    [
        weed,
        "server",
        "-dir=/data",
        "-ip.bind=0.0.0.0",
        "-filer",
        "-s3",
        "-s3.port=8333",
        f"-s3.config={config}",
        "-master.telemetry=false",
        "-volume.max=0",
        "-master.volumeSizeLimitMB=64",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ],
)
