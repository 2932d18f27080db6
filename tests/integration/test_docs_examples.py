"""Every curl example in README.md and SKILL.md runs, with the real curl, against Gunicorn in
placeholder mode and does what the docs say, so the docs cannot drift from the code.

An example is a fenced block (bash, sh, shell, console, zsh or no language, with a `curl`
command in it; any other block with a line starting with `curl`) or an inline `curl ...`
span naming the service. Conventions, also summarised in README's "Documentation examples are
tested":

- The service is `http://localhost:5000` (or `$IMAGE_GEN`, which SKILL.md uses); both point
  at the test server. Another spelling of that address fails the example.
- Before each example the harness generates a fresh two-image job. `<image_id>`, `<id>` and
  `$IMAGE_ID` are its first image, `<job_id>` and `$JOB_ID` its job; `$IMAGE_GEN_TOKEN` is
  set to a dummy token. Any other `<placeholder>` fails the example.
- Each curl call must succeed (2xx or 304) unless its line ends in a comment naming the
  status, e.g. `# 404 IMAGE_NOT_FOUND`, or the block is followed by a JSON error body, which
  is then what the last call must answer.
- A ```json block right after an example (before the next heading or block) must have the
  same keys as the last call's answer, at every level. `<!-- docs-test: abbreviated -->`
  before it allows it to show only some of them; `<!-- docs-test: may-lack <key> ... -->`
  names top-level keys an answer shows only in some states (a job's `queue` while queued).
- `<!-- docs-test: skip <reason> -->` right before a block skips it (reported as skipped).
- Blocks run with `bash -euo pipefail` in a temporary directory, so `-o file` is harmless.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.gunicorn_server import REPO, Service, run_gunicorn

DOCS = ("README.md", "SKILL.md")
CURL = "/usr/bin/curl"
DOCS_URL = "http://localhost:5000"
SHELL_LANGS = {"", "bash", "sh", "shell", "console", "zsh"}
BLOCK_TIMEOUT = 30.0
PLACEHOLDER = re.compile(r"<([a-z][a-z0-9_ -]*)>")
MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(\S+)\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
HEADING = re.compile(r"^#{1,6}\s")
INLINE_CURL = re.compile(r"`(curl\s[^`]+)`")
# A curl at a command position: line start, after ; & | ( or a backtick, or a shell keyword.
CURL_COMMAND = re.compile(r"(?:^|[;&|(`]|\b(?:then|do|else|time)\b)\s*curl(?=\s|$)")
# The trailing comment that states an expected answer: `# 404 IMAGE_NOT_FOUND`, `# -> 201`.
STATUS_COMMENT = re.compile(
    r"^\s*(?:->|→|=>)?\s*(?:HTTP\s*)?([1-5]\d\d)\b(?:\s+`?([A-Z][A-Z0-9_]+))?"
)
ERROR_ROW_CODE = re.compile(r"^`([A-Z][A-Z0-9_]+)`$")
ERROR_ROW_STATUS = re.compile(r"^[45]\d\d$")

# bash prelude: `curl` records every call's headers and body (in call order, subshells
# included) without changing what the example prints, and runs the real binary.
PRELUDE = f"""\
set -euo pipefail
curl() {{
  local n rc=0
  n=$(( $(cat "$DOCS_TEST_CALLS/count") + 1 ))
  echo "$n" > "$DOCS_TEST_CALLS/count"
  {CURL} -q --max-time 20 "$@" -D "$DOCS_TEST_CALLS/$n.headers" > "$DOCS_TEST_CALLS/$n.body" \\
    || rc=$?
  cat "$DOCS_TEST_CALLS/$n.body"
  return "$rc"
}}
"""


@dataclass(frozen=True)
class Expect:
    """What one curl call should answer: an exact status and/or an error code; else success."""

    status: int | None = None
    code: str | None = None
    openai_error: bool = False


@dataclass
class Example:
    """One runnable example from a document, with what its text says it should do."""

    file: str
    line: int
    script: str
    expects: list[Expect]
    json_text: str | None = None
    json_line: int = 0
    abbreviated: bool = False
    may_lack: frozenset[str] = frozenset()
    skip: str | None = None
    problems: list[str] = field(default_factory=list)
    part: int = 0  # the nth inline span on a line holding several

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}" + (f"({self.part})" if self.part else "")


@dataclass
class _Block:
    line: int
    lang: str
    text: str
    markers: list[tuple[str, str]]
    heading_before: int  # how many headings precede the block, to find "right after"


def _blocks(text: str) -> tuple[list[_Block], list[tuple[int, str]]]:
    """Fenced blocks (with the docs-test markers right before them) and the prose lines."""
    blocks: list[_Block] = []
    prose: list[tuple[int, str]] = []
    markers: list[tuple[str, str]] = []
    headings = 0
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        opening = FENCE.match(line)
        if opening:
            indent, fence, lang = opening.groups()
            body: list[str] = []
            index += 1
            while index < len(lines) and not (
                lines[index].strip().startswith(fence[0] * len(fence))
                and not lines[index].strip().strip(fence[0])
            ):
                body.append(lines[index].removeprefix(indent))
                index += 1
            start = index - len(body)
            blocks.append(_Block(start, lang.lower(), "\n".join(body), markers, headings))
            markers = []
        else:
            marker = MARKER.match(line)
            if marker:
                markers.append((marker[1], marker[2]))
            elif line.strip():
                markers = []
                prose.append((index + 1, line))
                if HEADING.match(line):
                    headings += 1
        index += 1
    return blocks, prose


def _console_commands(text: str) -> str:
    """The commands of a console transcript: `$ ` lines and their continuations."""
    kept: list[str] = []
    continuing = False
    for line in text.splitlines():
        stripped = line.lstrip()
        if continuing:
            kept.append(line)
        elif stripped.startswith("$ "):
            kept.append(stripped[2:])
        else:
            continue
        continuing = line.rstrip().endswith("\\")
    return "\n".join(kept)


def logical_lines(script: str) -> list[tuple[str, str]]:
    """(code, comment) per logical shell line: continuations joined, quotes respected."""
    result: list[tuple[str, str]] = []
    code: list[str] = []
    comment: list[str] | None = None
    quote: str | None = None
    index = 0
    while index < len(script):
        char = script[index]
        if comment is not None:
            if char == "\n":
                result.append(("".join(code), "".join(comment)))
                code, comment = [], None
            else:
                comment.append(char)
        elif quote == "'":
            code.append(char)
            quote = None if char == "'" else quote
        elif char == "\\" and index + 1 < len(script):
            following = script[index + 1]
            code.append(" " if following == "\n" and quote is None else char + following)
            index += 2
            continue
        elif quote == '"':
            code.append(char)
            quote = None if char == '"' else quote
        elif char in "'\"":
            quote = char
            code.append(char)
        elif char == "#" and (not code or code[-1].isspace()):
            comment = []
        elif char == "\n":
            result.append(("".join(code), ""))
            code = []
        else:
            code.append(char)
        index += 1
    result.append(("".join(code), "".join(comment or [])))
    return [(c.strip(), m.strip()) for c, m in result if c.strip() or m.strip()]


def _expects(script: str) -> list[Expect]:
    """One Expect per curl command in the text, from a status comment on its line."""
    expects: list[Expect] = []
    for code, comment in logical_lines(script):
        stated = STATUS_COMMENT.match(comment)
        expect = Expect(int(stated[1]), stated[2]) if stated else Expect()
        expects.extend(expect for _ in CURL_COMMAND.finditer(code))
    return expects


def _script(block: _Block) -> str:
    """The commands of a block: a console transcript (`$ ` prompts) keeps only its commands."""
    transcript = block.lang == "console" or (
        block.lang not in SHELL_LANGS and re.search(r"(?m)^\s*\$\s+curl\s", block.text)
    )
    return _console_commands(block.text) if transcript else block.text


def _is_example(block: _Block) -> bool:
    if block.lang in SHELL_LANGS:
        return any(CURL_COMMAND.search(code) for code, _ in logical_lines(_script(block)))
    return block.lang != "json" and any(
        re.match(r"\s*(\$\s+)?curl\s", line) for line in block.text.splitlines()
    )


def _error_expect(document: Any) -> Expect | None:
    """The expectation a JSON example states when it is an error body."""
    if not isinstance(document, dict):
        return None
    if document.get("status") == "failed" and isinstance(document.get("code"), str):
        return Expect(code=document["code"])
    if isinstance(document.get("error"), dict):
        return Expect(openai_error=True)
    return None


def extract_examples(name: str, text: str) -> list[Example]:
    """Every curl example in one markdown document, in document order."""
    blocks, prose = _blocks(text)
    examples: list[Example] = []
    for position, block in enumerate(blocks):
        if not _is_example(block):
            continue
        script = _script(block)
        example = Example(name, block.line, script, _expects(script))
        for kind, argument in block.markers:
            if kind == "skip":
                example.skip = argument or "no reason given"
            else:
                example.problems.append(f"unknown or misplaced marker docs-test: {kind}")
        following = blocks[position + 1] if position + 1 < len(blocks) else None
        if (
            following is not None
            and following.lang == "json"
            and following.heading_before == block.heading_before
        ):
            example.json_text = following.text
            example.json_line = following.line
            for kind, argument in following.markers:
                if kind == "abbreviated":
                    example.abbreviated = True
                elif kind == "may-lack" and argument:
                    example.may_lack = frozenset(argument.split())
                else:
                    example.problems.append(f"unknown marker before JSON: {kind} {argument}")
            try:
                stated = _error_expect(json.loads(following.text))
            except ValueError as exc:
                example.problems.append(f"the JSON at line {following.line} is not JSON: {exc}")
                stated = None
            if stated is not None and example.expects:
                last = example.expects[-1]
                if last.status is None and last.code is None:
                    example.expects[-1] = stated
        examples.append(example)
    for number, line in prose:
        spans = [
            span
            for span in INLINE_CURL.findall(line)
            if "$IMAGE_GEN" in span or "localhost" in span or "://" in span
        ]
        for part, span in enumerate(spans, 1):
            example = Example(name, number, span, _expects(span))
            example.part = part if len(spans) > 1 else 0
            examples.append(example)
    return sorted(examples, key=lambda e: (e.line, e.part))


def error_statuses(texts: list[str]) -> dict[str, int]:
    """code -> HTTP status from the docs' error tables (rows with a `CODE` and a 4xx/5xx)."""
    statuses: dict[str, int] = {}
    for text in texts:
        for line in text.splitlines():
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            codes = [m[1] for m in map(ERROR_ROW_CODE.match, cells) if m]
            numbers = [int(cell) for cell in cells if ERROR_ROW_STATUS.match(cell)]
            if len(codes) == 1 and len(numbers) == 1:
                statuses.setdefault(codes[0], numbers[0])
    return statuses


def _read_docs() -> dict[str, str]:
    return {name: (REPO / name).read_text(encoding="utf-8") for name in DOCS}


DOC_TEXTS = _read_docs()
EXAMPLES = [e for name, text in DOC_TEXTS.items() for e in extract_examples(name, text)]
ERROR_STATUSES = error_statuses(list(DOC_TEXTS.values()))


# --- running an example ------------------------------------------------------------------


@dataclass
class Call:
    status: int
    body: bytes


@dataclass
class Run:
    returncode: int
    output: str
    calls: list[Call]


def substitute(script: str, base_url: str, image_id: str, job_id: str) -> tuple[str, list[str]]:
    """The script pointed at the test server with real ids; and what breaks the conventions."""
    problems: list[str] = []
    script = script.replace(DOCS_URL, base_url)
    for stray in ("localhost:5000", "127.0.0.1:5000"):
        if stray in script:
            problems.append(f"{stray} is not spelled {DOCS_URL} (or $IMAGE_GEN)")
    values = {"id": image_id, "image_id": image_id, "job_id": job_id}

    def replace(match: re.Match[str]) -> str:
        if match[1] in values:
            return values[match[1]]
        problems.append(f"unknown placeholder {match[0]}: use <image_id>, <id> or <job_id>")
        return match[0]

    return PLACEHOLDER.sub(replace, script), problems


def _status(headers: str) -> int:
    statuses = re.findall(r"(?m)^HTTP/\S+\s+(\d{3})", headers)
    return int(statuses[-1]) if statuses else 0


def run_script(script: str, service: Service, workdir: Path, image_id: str, job_id: str) -> Run:
    """Run a (substituted) script with bash in `workdir`, recording every curl call."""
    calls_dir = workdir / ".docs-test-calls"
    calls_dir.mkdir(parents=True)
    (calls_dir / "count").write_text("0")
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
        "no_proxy": "*",
        "NO_PROXY": "*",
        "IMAGE_GEN": service.url,
        "IMAGE_GEN_TOKEN": "docs-test-token",
        "IMAGE_ID": image_id,
        "JOB_ID": job_id,
        "DOCS_TEST_CALLS": str(calls_dir),
    }
    with subprocess.Popen(
        ["bash", "-c", PRELUDE + script],
        cwd=workdir,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so a timeout stops every child
    ) as process:
        try:
            raw, _ = process.communicate(timeout=BLOCK_TIMEOUT)
            returncode = process.returncode
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raw, _ = process.communicate(timeout=5)
            returncode, raw = -1, raw + f"\n(killed after {BLOCK_TIMEOUT:.0f} s)".encode()
    calls = []
    for number in range(1, int((calls_dir / "count").read_text()) + 1):
        headers = calls_dir / f"{number}.headers"
        body = calls_dir / f"{number}.body"
        calls.append(
            Call(
                _status(headers.read_text("latin-1") if headers.exists() else ""),
                body.read_bytes() if body.exists() else b"",
            )
        )
    output = raw.decode("utf-8", "replace")
    return Run(returncode, output if len(output) < 4000 else output[:4000] + "...", calls)


def _body_json(body: bytes) -> Any:
    if body.startswith(b"HTTP/"):  # -i: the headers came first
        body = body.split(b"\r\n\r\n")[-1]
    return json.loads(body)


def _call_problems(number: int, call: Call, expect: Expect) -> list[str]:
    """How one call's answer differs from what the docs say it answers."""
    status = call.status
    if expect.status is not None:
        wanted, ok = f"HTTP {expect.status}", status == expect.status
    elif expect.code is not None and expect.code in ERROR_STATUSES:
        wanted = f"HTTP {ERROR_STATUSES[expect.code]}"
        ok = status == ERROR_STATUSES[expect.code]
    elif expect.code is not None or expect.openai_error:
        wanted, ok = "an error status (4xx/5xx)", 400 <= status < 600
    else:
        wanted, ok = "success (2xx or 304)", 200 <= status < 300 or status == 304
    problems = [] if ok else [f"call {number} answered HTTP {status}, the docs say {wanted}"]
    if expect.code is not None:
        try:
            code = _body_json(call.body).get("code")
        except (ValueError, AttributeError):
            code = None
        if code != expect.code:
            problems.append(f"call {number} answered code {code!r}, the docs say {expect.code}")
    return problems


def key_differences(
    doc: Any, real: Any, abbreviated: bool, path: str = "$", may_lack: frozenset[str] = frozenset()
) -> list[str]:
    """Where the keys of a documented JSON answer differ from the real one (values ignored);
    top-level keys in `may_lack` may be missing from the answer."""
    if isinstance(doc, dict):
        if not isinstance(real, dict):
            return [f"{path}: the docs show an object, the answer has {type(real).__name__}"]
        problems = []
        extra = sorted(set(doc) - set(real) - may_lack)
        missing = sorted(set(real) - set(doc))
        if extra:
            problems.append(f"{path}: the docs show keys the answer lacks: {extra}")
        if missing and not abbreviated:
            problems.append(f"{path}: the answer has keys the docs do not show: {missing}")
        for key in sorted(set(doc) & set(real)):
            problems += key_differences(doc[key], real[key], abbreviated, f"{path}.{key}")
        return problems
    if isinstance(doc, list) and doc:
        if not isinstance(real, list) or not real:
            return [f"{path}: the docs show a non-empty list, the answer has {real!r:.80}"]
        problems = []
        for index, item in enumerate(doc):
            counterpart = real[index] if index < len(real) else real[0]
            problems += key_differences(item, counterpart, abbreviated, f"{path}[{index}]")
        return problems
    return []


def check_example(example: Example, service: Service, workdir: Path) -> None:
    """Run one example and assert it does what its docs say; the message names every problem."""
    job = service.request("POST", "/generate", {"prompt": "a docs example", "count": 2})
    assert job.status == 200, job.body[:300]
    image_id, job_id = job.json()["images"][0]["id"], job.json()["job_id"]
    script, problems = substitute(example.script, service.url, image_id, job_id)
    problems = example.problems + problems
    run = None
    if not problems:
        run = run_script(script, service, workdir, image_id, job_id)
        problems += _run_problems(example, run)
    if problems:
        detail = "" if run is None else f"\n--- output (exit {run.returncode}) ---\n{run.output}"
        raise AssertionError(
            f"{example.id} does not do what the docs say:\n- "
            + "\n- ".join(problems)
            + f"\n--- example ---\n{example.script}{detail}"
        )


def _run_problems(example: Example, run: Run) -> list[str]:
    problems = []
    if run.returncode != 0:
        problems.append(f"the commands exited with status {run.returncode}")
    if not run.calls:
        return [*problems, "no curl call was made"]
    expects = example.expects
    if len(expects) == len(run.calls):
        pairs = list(zip(run.calls, expects, strict=True))
    elif len(set(expects)) == 1:  # a loop or a function: the one expectation holds for all
        pairs = [(call, expects[0]) for call in run.calls]
    else:
        return [
            *problems,
            f"{len(run.calls)} curl calls ran for {len(expects)} written with different "
            "expectations; cannot tell which is which",
        ]
    for number, (call, expect) in enumerate(pairs, 1):
        problems += _call_problems(number, call, expect)
    if example.json_text is not None:
        last = run.calls[-1]
        try:
            real = _body_json(last.body)
        except ValueError:
            problems.append(
                f"the JSON at line {example.json_line} follows a call whose answer is not "
                f"JSON: {last.body[:120]!r}"
            )
        else:
            documented = json.loads(example.json_text)
            differences = key_differences(
                documented, real, example.abbreviated, may_lack=example.may_lack
            )
            for difference in differences:
                problems.append(f"JSON at line {example.json_line}: {difference}")
    return problems


# --- the tests ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The service under real Gunicorn, keyless, in placeholder mode."""
    env = {"IMAGE_GEN_PROVIDER": "placeholder", "GUNICORN_WORKERS": "1", "GUNICORN_THREADS": "4"}
    with run_gunicorn(tmp_path_factory.mktemp("docs-examples"), env) as running:
        yield running


def _param(example: Example) -> Any:
    reason = f"{example.id} docs-test: skip {example.skip}"
    marks = [pytest.mark.skip(reason=reason)] if example.skip else []
    return pytest.param(example, id=example.id, marks=marks)


@pytest.mark.parametrize("example", [_param(e) for e in EXAMPLES])
def test_documented_curl_example_does_what_the_docs_say(example, service, tmp_path):
    check_example(example, service, tmp_path)


@pytest.mark.parametrize("name", DOCS)
def test_each_document_has_curl_examples_that_run(name):
    running = [e for e in EXAMPLES if e.file == name and not e.skip]
    assert running, f"no runnable curl example found in {name}: is the extractor broken?"


def test_docs_test_markers_are_known_and_sit_on_the_right_blocks():
    for name, text in DOC_TEXTS.items():
        blocks, _ = _blocks(text)
        for block in blocks:
            for kind, reason in block.markers:
                where = f"{name}:{block.line}"
                known = ("skip", "abbreviated", "may-lack")
                assert kind in known, f"{where}: unknown marker {kind}"
                if kind == "skip":
                    assert _is_example(block), f"{where}: a skip marker on a block without curl"
                    assert reason, f"{where}: a skip marker must give its reason"
                else:
                    assert block.lang == "json", f"{where}: 'abbreviated' is for JSON blocks"


# --- the harness catches wrong examples ---------------------------------------------------

# case -> (markdown, the reason the check must give)
WRONG = {
    "a success example that fails": (
        "```bash\ncurl -s http://localhost:5000/no-such-route\n```\n",
        "call 1 answered HTTP 404, the docs say success",
    ),
    "an error example whose status is wrong": (
        "```bash\ncurl -s http://localhost:5000/images/<image_id>   # 404 IMAGE_NOT_FOUND\n```\n",
        "call 1 answered HTTP 200, the docs say HTTP 404",
    ),
    "an error body whose code is wrong": (
        "```bash\ncurl -s http://localhost:5000/models/no-such-model\n```\n\n"
        '```json\n{"error": "Gone.", "status": "failed", "code": "IMAGE_NOT_FOUND"}\n```\n',
        "call 1 answered code 'MODEL_NOT_FOUND', the docs say IMAGE_NOT_FOUND",
    ),
    "an answer with a key the service does not send": (
        "```bash\ncurl -s -X DELETE http://localhost:5000/images/<image_id>\n```\n\n"
        '```json\n{"status": "success", "message": "gone", "id": "x", "job_id": "y", "colour": 1}\n'
        "```\n",
        "$: the docs show keys the answer lacks: ['colour']",
    ),
    "an answer missing a key the service sends": (
        "```bash\ncurl -s http://localhost:5000/no-such-route   # 404\n```\n\n"
        '```json\n{"error": "not found", "status": "failed"}\n```\n',
        "$: the answer has keys the docs do not show: ['code']",
    ),
    "a placeholder the harness cannot fill": (
        "```bash\ncurl -s http://localhost:5000/images/<widget_id>\n```\n",
        "unknown placeholder <widget_id>",
    ),
    "the service under another address": (
        "```bash\ncurl -s localhost:5000/health\n```\n",
        "localhost:5000 is not spelled http://localhost:5000",
    ),
    "a command that fails": (
        "```bash\ncurl -s http://localhost:5000/health | grep -q no-such-text\n```\n",
        "the commands exited with status 1",
    ),
}

RIGHT = """
```console
$ curl -s -o picture.png http://localhost:5000/images/<image_id>
$ curl -s -X DELETE "$IMAGE_GEN/images/$IMAGE_ID" \\
       -H "Authorization: Bearer $IMAGE_GEN_TOKEN"
{"status": "success", ...}
$ curl -s http://localhost:5000/images/<id>   # 404 IMAGE_NOT_FOUND
```

<!-- docs-test: abbreviated -->
```json
{"status": "failed", "code": "IMAGE_NOT_FOUND"}
```

Also `curl -s "$IMAGE_GEN/jobs/<job_id>"` works.
"""


@pytest.mark.parametrize("case", sorted(WRONG))
def test_a_wrong_example_fails_the_check(case, service, tmp_path):
    markdown, reason = WRONG[case]
    (example,) = extract_examples("wrong.md", markdown)
    with pytest.raises(AssertionError, match=re.escape(reason)):
        check_example(example, service, tmp_path)


def test_a_right_example_passes_the_check(service, tmp_path):
    examples = extract_examples("right.md", RIGHT)
    assert [e.line for e in examples] == [2, 15]
    assert examples[0].expects == [Expect(), Expect(), Expect(404, "IMAGE_NOT_FOUND")]
    for example in examples:
        check_example(example, service, tmp_path / str(example.line))
    assert (tmp_path / "2" / "picture.png").read_bytes().startswith(b"\x89PNG")


def test_skip_markers_and_json_after_a_heading_are_read_as_documented():
    text = """
<!-- docs-test: skip needs a Docker engine -->
```bash
docker compose up -d && curl -s http://localhost:5000/health
```

## Next section

```json
{"not": "the answer above"}
```

```sh
ID=$(curl -s http://localhost:5000/images | jq -r '.images[0].id')  # comment # 200
echo "a curl of smoke # 404"
```
"""
    skipped, later = extract_examples("markers.md", text)
    assert skipped.skip == "needs a Docker engine" and skipped.json_text is None
    assert later.skip is None and later.expects == [Expect()]
