"""docker/: the three images' Dockerfiles, checked without a Docker engine.

A small parser reads each Dockerfile the way `docker build` does (keywords, line
continuations, comments) and checks what would otherwise fail only at build time: a FROM
first, COPY sources that exist and are not excluded by .dockerignore, exec-form ENTRYPOINT
and CMD that are valid JSON, and torch kept out of the device runtime. Torch-free and fast.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IMAGES = ("cpu", "cuda", "jetson")
KEYWORDS = {"ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
            "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME",
            "WORKDIR"}
JSON_FORMS = {"CMD", "ENTRYPOINT", "RUN", "SHELL"}  # take either a JSON array or a shell string
# The one place torch may be installed: the cpu image's exporter branch.
EXPORT_BRANCH = re.compile(r'if \[ "\$\{?WITH_EXPORT\}?" = "1" \]; then(.*?);\s*fi\b', re.S)


# --- Dockerfile parsing -------------------------------------------------------------------

@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int  # where the instruction starts, 1-based


class DockerfileError(ValueError):
    """A Dockerfile that `docker build` would reject."""


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuations joined; comment lines dropped, also inside a
    continuation, as BuildKit does. Heredocs are not supported (the images use none)."""
    instructions, parts, start = [], [], 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("#") or (not line and not parts):
            continue
        if not parts:
            start = number
        continued = line.endswith("\\")
        parts.append(line[:-1].strip() if continued else line)
        if not continued:
            instructions.append(_instruction(" ".join(p for p in parts if p), start))
            parts = []
    if parts:
        raise DockerfileError(f"line {start}: the file ends inside a line continuation")
    return instructions


def _instruction(logical: str, line: int) -> Instruction:
    keyword, _, args = logical.partition(" ")
    if keyword.upper() not in KEYWORDS:
        raise DockerfileError(f"line {line}: unknown instruction {keyword!r}")
    return Instruction(keyword.upper(), args.strip(), line)


# --- .dockerignore --------------------------------------------------------------------------

def _pattern_regex(pattern: str) -> re.Pattern:
    """Docker's rules: Go filepath.Match per path segment, plus `**` for any number of them."""
    pattern = re.sub(r"/+", "/", pattern.strip().lstrip("/")).removeprefix("./").rstrip("/")
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[" and "]" in pattern[i:]:
            end = pattern.index("]", i)
            out, i = out + "[" + pattern[i + 1:end].replace("!", "^", 1) + "]", end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def read_dockerignore(text: str) -> list[tuple[bool, re.Pattern]]:
    """(is an exception `!pattern`, regex) per rule, in file order."""
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((negated, _pattern_regex(line[1:] if negated else line)))
    return rules


def is_ignored(path: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """A path is excluded when the last rule matching it or one of its parents excludes it."""
    segments = path.strip("/").split("/")
    prefixes = ["/".join(segments[:n]) for n in range(1, len(segments) + 1)]
    ignored = False
    for negated, regex in rules:
        if any(regex.match(prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


# --- checks ---------------------------------------------------------------------------------

def dockerfile_problems(text: str, root: Path, ignore_rules) -> list[str]:
    """Everything wrong with one Dockerfile, as messages; [] when it is fine."""
    try:
        instructions = parse_dockerfile(text)
    except DockerfileError as err:
        return [str(err)]
    problems = _order_problems(instructions)
    for ins in instructions:
        where = f"line {ins.line} {ins.keyword}"
        if ins.keyword in JSON_FORMS and ins.args.startswith("["):
            problems += _json_problems(ins.args, where)
        if ins.keyword == "ENTRYPOINT" and not ins.args.startswith("["):
            # shell form puts /bin/sh at PID 1, which swallows docker stop's SIGTERM
            problems.append(f"{where}: use the exec (JSON array) form")
        if ins.keyword in ("COPY", "ADD"):
            problems += _copy_problems(ins, root, ignore_rules, where)
        if ins.keyword == "RUN":
            problems += [f"{where}: {spec!r} is not pinned with ==" for spec in _torch_specs(ins.args)
                         if "==" not in spec]
    return problems


def _order_problems(instructions: list[Instruction]) -> list[str]:
    keywords = [ins.keyword for ins in instructions]
    if "FROM" not in keywords:
        return ["no FROM instruction"]
    before = [k for k in keywords[:keywords.index("FROM")] if k != "ARG"]
    return [f"{k} before the first FROM (only ARG may come first)" for k in before]


def _json_problems(args: str, where: str) -> list[str]:
    try:
        value = json.loads(args)
    except json.JSONDecodeError as err:
        return [f"{where}: JSON array form does not parse: {err}"]
    if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
        return [f"{where}: JSON form must be a non-empty array of strings"]
    return []


def _copy_problems(ins: Instruction, root: Path, ignore_rules, where: str) -> list[str]:
    words = json.loads(ins.args) if ins.args.startswith("[") else shlex.split(ins.args)
    flags = [w for w in words if w.startswith("--")]
    paths = [w for w in words if not w.startswith("--")]
    if any(f.startswith("--from=") for f in flags):
        return []  # sources come from another stage or image, not the build context
    if len(paths) < 2:
        return [f"{where}: needs a source and a destination"]
    problems = []
    for source in paths[:-1]:
        if re.match(r"^(https?://|git@)", source):
            continue
        rel = source.lstrip("/").removeprefix("./") or "."
        matches = list(root.glob(rel)) if any(c in rel for c in "*?[") else [root / rel]
        if "$" in rel or not any(m.exists() for m in matches):
            problems.append(f"{where}: source {source!r} does not exist in the build context")
        elif rel != "." and is_ignored(rel, ignore_rules):
            problems.append(f"{where}: source {source!r} is excluded by .dockerignore")
    return problems


def _pip_installs(shell: str) -> list[list[str]]:
    """The argument lists of every `pip install` in a RUN's shell text."""
    commands = re.split(r"&&|\|\||;|\n|\bthen\b|\belse\b", shell)
    found = []
    for command in commands:
        match = re.search(r"\bpip3?\s+install\s+(.*)", command)
        if match:
            found.append(shlex.split(match.group(1)))
    return found


def _torch_specs(shell: str) -> list[str]:
    return [arg for args in _pip_installs(shell) for arg in args
            if re.match(r"^torch($|[=<>!~\[ ;])", arg)]


def _dockerfile(image: str) -> str:
    return (REPO / "docker" / image / "Dockerfile").read_text(encoding="utf-8")


def _runs(image: str) -> str:
    """What the image runs: its RUN instructions, and the docker/*.sh scripts it copies in."""
    instructions = parse_dockerfile(_dockerfile(image))
    scripts = [REPO / src for i in instructions if i.keyword == "COPY"
               for src in shlex.split(i.args)[:-1] if src.startswith("docker/") and src.endswith(".sh")]
    return "\n".join([i.args for i in instructions if i.keyword == "RUN"] +
                     [script.read_text(encoding="utf-8") for script in scripts])


@pytest.fixture(scope="module")
def ignore_rules():
    return read_dockerignore((REPO / ".dockerignore").read_text(encoding="utf-8"))


# --- the images -----------------------------------------------------------------------------

@pytest.mark.parametrize("image", IMAGES)
def test_image_has_dockerfile_and_readme(image):
    readme = (REPO / "docker" / image / "README.md").read_text(encoding="utf-8")
    assert f"docker build -f docker/{image}/Dockerfile" in readme
    assert "docker run" in readme and "finetune --bundle /bundle" in readme
    assert "## Memory" in readme


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_is_valid(image, ignore_rules):
    assert dockerfile_problems(_dockerfile(image), REPO, ignore_rules) == []


@pytest.mark.parametrize("image", IMAGES)
def test_entrypoint_is_the_cli(image):
    instructions = parse_dockerfile(_dockerfile(image))
    entrypoints = [json.loads(i.args) for i in instructions if i.keyword == "ENTRYPOINT"]
    assert entrypoints[-1:] == [["edge-zo"]]


@pytest.mark.parametrize("image", IMAGES)
def test_runtime_install_never_pulls_torch(image):
    """torch is pip-installed only in the cpu image's WITH_EXPORT branch, pinned, from the
    CPU index; the exporter extra likewise. Elsewhere no install mentions either."""
    runs = _runs(image)
    branch = "".join(EXPORT_BRANCH.findall(runs)) if image == "cpu" else ""
    outside = EXPORT_BRANCH.sub("", runs)
    assert _torch_specs(outside) == [] and "[export" not in outside
    if image == "cpu":
        assert _torch_specs(branch) == ["torch==2.13.0"]
        assert "--index-url https://download.pytorch.org/whl/cpu" in branch
        assert '".[export]"' in branch


def test_package_dependencies_exclude_torch():
    """`pip install .` (what every image runs) pulls [project].dependencies: no torch there."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = [re.split(r"[^A-Za-z0-9._-]", dep)[0].lower() for dep in project["dependencies"]]
    assert "torch" not in names and "onnxruntime" in names


@pytest.mark.parametrize("image", ("cuda", "jetson"))
def test_gpu_images_install_onnxruntime_gpu_without_the_cpu_build(image):
    runs = _runs(image)
    gpu = [args for args in _pip_installs(runs) if any(a.startswith("onnxruntime-gpu") for a in args)]
    assert gpu, "onnxruntime-gpu is never installed"
    own = [args for args in _pip_installs(runs) if "." in args]
    assert own and all("--no-deps" in args for args in own), own
    assert "!= 'onnxruntime'" in runs  # the dependency list read back drops the CPU build
    assert "if python3 -m pip show -q onnxruntime" in runs


def test_device_images_carry_no_exporter():
    """The exporter is host-side: no image copies it; only the cpu image's WITH_EXPORT branch
    installs it (bind-mounted for that one RUN), and the GPU images share one install script."""
    for image in IMAGES:
        copies = [i.args for i in parse_dockerfile(_dockerfile(image)) if i.keyword == "COPY"]
        assert not any("export" in c or "device_profiles" in c for c in copies), (image, copies)
    for image in IMAGES:  # each build fails if the exporter got in anyway
        assert "find_spec('edge_zo_export') is not None" in _runs(image), image
    assert all("sh /tmp/install_gpu.sh" in _runs(image) for image in ("cuda", "jetson"))


def test_jetson_image_uses_l4t_tag_arg_and_jetson_index():
    text = _dockerfile("jetson")
    instructions = parse_dockerfile(text)
    assert instructions[0].keyword == "ARG" and instructions[0].args.startswith("L4T_TAG=r36")
    froms = [i.args for i in instructions if i.keyword == "FROM"]
    assert froms == ["nvcr.io/nvidia/l4t-jetpack:${L4T_TAG}"]
    assert "https://pypi.jetson-ai-lab.io/jp6/cu126" in text
    assert "JetPack 5" in text and "opset 18" in text


def test_gpu_readmes_name_the_runtime_flags_and_a_real_profile():
    assert "--gpus all" in (REPO / "docker/cuda/README.md").read_text(encoding="utf-8")
    jetson = (REPO / "docker/jetson/README.md").read_text(encoding="utf-8")
    assert "--runtime nvidia" in jetson
    for profile in re.findall(r"jetson-[a-z0-9-]+gb", jetson):
        assert (REPO / "edge_zo" / "device_profiles" / f"{profile}.toml").is_file(), profile


def test_top_readme_lists_every_image():
    text = (REPO / "docker" / "README.md").read_text(encoding="utf-8")
    for image in IMAGES:
        assert f"edge-zo:{image}" in text and f"docker/{image}/Dockerfile" in text


# --- .dockerignore --------------------------------------------------------------------------

@pytest.mark.parametrize("path", [".git/config", ".venv/bin/python", "runs/r1/metrics.jsonl",
                                  "edge_zo/__pycache__/cli.cpython-311.pyc", ".pytest_cache/v",
                                  "benchmarks/results/step.json", "bundle/model.onnx",
                                  "bundle/model.onnx.data", "edge_zo.egg-info/PKG-INFO"])
def test_dockerignore_excludes(path, ignore_rules):
    assert is_ignored(path, ignore_rules)


@pytest.mark.parametrize("path", ["pyproject.toml", "README.md", "edge_zo/cli.py",
                                  "edge_zo/samples/reviews-train.jsonl", "edge_zo_export/command.py",
                                  "edge_zo/device_profiles/jetson-orin-nano-8gb.toml", "benchmarks/run.py"])
def test_dockerignore_keeps_sources(path, ignore_rules):
    assert not is_ignored(path, ignore_rules)


def test_dockerignore_rules_follow_docker_semantics():
    rules = read_dockerignore("*.log\n**/tmp\ndocs\n!docs/keep.md\n")
    assert is_ignored("a.log", rules) and not is_ignored("sub/a.log", rules)  # root only
    assert is_ignored("x/y/tmp/f", rules) and is_ignored("docs/other.md", rules)
    assert not is_ignored("docs/keep.md", rules)  # the later exception wins


# --- the checker catches what it should (it must be able to fail) --------------------------

GOOD = 'ARG BASE=python:3.11-slim\nFROM ${BASE}\nCOPY pyproject.toml ./\nENTRYPOINT ["edge-zo"]\n'


def _problems(text: str, rules=()) -> list[str]:
    return dockerfile_problems(text, REPO, list(rules))


def test_checker_accepts_a_good_file():
    assert _problems(GOOD) == []


def test_checker_reports_missing_copy_source():
    problems = _problems(GOOD + "COPY no_such_dir ./x\nCOPY --from=build /wheels /wheels\n")
    assert len(problems) == 1 and "'no_such_dir' does not exist" in problems[0]


def test_checker_reports_copy_of_an_ignored_path():
    problems = _problems(GOOD + "COPY edge_zo ./edge_zo\n", read_dockerignore("edge_zo\n"))
    assert len(problems) == 1 and "excluded by .dockerignore" in problems[0]


@pytest.mark.parametrize("text, expected", [
    ("RUN echo hi\nFROM python:3.11-slim\n", "RUN before the first FROM"),
    ("FROM python:3.11-slim\nCOPPY a b\n", "unknown instruction 'COPPY'"),
    ("FROM python:3.11-slim\nRUN echo \\\n", "ends inside a line continuation"),
    ('FROM python:3.11-slim\nENTRYPOINT ["edge-zo",]\n', "does not parse"),
    ("FROM python:3.11-slim\nENTRYPOINT edge-zo\n", "exec (JSON array) form"),
    ("FROM python:3.11-slim\nRUN pip install -U pip && pip install torch onnx\n", "'torch' is not pinned"),
    ("FROM python:3.11-slim\nRUN pip install 'torch>=2.0'\n", "'torch>=2.0' is not pinned"),
])
def test_checker_reports(text, expected):
    problems = _problems(text)
    assert any(expected in p for p in problems), problems


def test_parser_joins_continuations_and_skips_comments():
    text = "# c\nFROM a\nRUN one \\\n    # inside\n    two \\\n    three\nCMD [\"x\"]\n"
    assert [(i.keyword, i.args, i.line) for i in parse_dockerfile(text)] == [
        ("FROM", "a", 2), ("RUN", "one two three", 3), ("CMD", '["x"]', 7)]
