"""Turn mutmut's results (``mutants/*.meta``) into ``benchmarks/results/mutation.md``.

Per module: how many mutants were killed, survived, had no test running the mutated function,
timed out or were not checked (a run stopped by its time limit), and the mutation score —
killed / (checked − equivalent). Every surviving mutant is listed with ``file:line`` and its
diff; those judged equivalent or harmless are listed with the reason, from
``benchmarks/mutation_equivalent.toml``. The machine and the date head the report.

Run by ``make mutate`` after ``mutmut run``, from the repository root:

    python benchmarks/mutation_report.py [--output F] [--tests "tests/a.py ..."] [--time-limit S] [--keep] MODULE.py ...

``--pending`` prints, instead, the names of the modules' mutants still to check (not checked, survived or
without tests, less the listed equivalents that survived in this checkout), for ``make mutate MUTATE_PENDING=1``
to go on where a time-limited run stopped, or to re-check survivors after new tests.

``--patterns`` prints an fnmatch pattern for every mutant of each module (for ``make mutate MUTATE_MODULES=...``).

``--keep`` keeps the rows and sections of the modules the existing report holds and this run did not check
(mutmut's state in ``mutants/`` is local to a checkout; the report is what is committed).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import tomllib
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT = ROOT / "benchmarks" / "mutation_equivalent.toml"

# mutmut's exit codes (mutmut.stats.status_by_exit_code)
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", 37: "type check", 2: "interrupted",
          -11: "crashed", -9: "crashed", None: "not checked"}
KILLED = ("killed", "timeout", "crashed", "type check")  # a test process killed by a signal did not pass


@dataclass(frozen=True)
class Mutant:
    name: str
    module: str  # path, e.g. segflow/tiling.py
    status: str

    @property
    def function(self) -> str:
        """``Class.method`` or ``function`` mutated (mutmut names: ``pkg.mod.xǁClassǁmethod__mutmut_3``)."""
        local = self.name.rsplit("__mutmut_", 1)[0].rsplit(".", 1)[-1]
        if local.startswith("xǁ"):
            return ".".join(part for part in local[2:].split("ǁ") if part)
        return local[2:] if local.startswith("x_") else local


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = ""
    try:
        with open("/proc/meminfo") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal"))
        memory = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{os.cpu_count()} CPU cores ({cpu}){memory}, {platform.system()} {platform.release()}"


def load_mutants(module: str) -> list[Mutant]:
    meta = ROOT / "mutants" / f"{module}.meta"
    if not meta.is_file():
        return []
    codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
    return [Mutant(name, module, STATUS.get(code, "suspicious")) for name, code in sorted(codes.items(), key=_order)]


def _order(item: tuple[str, object]) -> tuple[str, int]:
    name = item[0]
    head, _, number = name.rpartition("__mutmut_")
    return head, int(number) if number.isdigit() else 0


def load_equivalent() -> dict[str, dict[str, str]]:
    if not EQUIVALENT.is_file():
        return {}
    entries = tomllib.loads(EQUIVALENT.read_text(encoding="utf-8")).get("mutant", [])
    return {e["name"]: e for e in entries}


def diff_of(mutant: Mutant) -> str:
    from mutmut.mutation.diff_apply import get_diff_for_mutant  # the dev dependency that made the results

    try:
        return get_diff_for_mutant(mutant.name, path=mutant.module)
    except Exception as exc:  # an index older than the source: say so instead of failing the report
        return f"(diff unavailable: {type(exc).__name__}: {exc})"


def changed_lines(diff: str) -> tuple[list[str], list[str]]:
    body = [line for line in diff.splitlines() if not line.startswith(("---", "+++", "@@"))]
    return [line[1:] for line in body if line.startswith("-")], [line[1:] for line in body if line.startswith("+")]


def _function_span(tree: ast.Module, qualname: str) -> tuple[int, int] | None:
    """First and last line of ``function`` or ``Class.method`` at the top of ``tree``."""
    body: list[ast.stmt] = tree.body
    *classes, name = qualname.split(".")
    for cls in classes:
        body = next((n.body for n in body if isinstance(n, ast.ClassDef) and n.name == cls), [])
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            return node.lineno, node.end_lineno or node.lineno
    return None


def source_line(mutant: Mutant, diff: str) -> int | None:
    """Line in the source file of the first line the mutant changes (searched within its function)."""
    source = (ROOT / mutant.module).read_text(encoding="utf-8")
    lines = source.splitlines()
    span = _function_span(ast.parse(source), mutant.function)
    if span is None:
        return None
    removed, added = changed_lines(diff)
    for wanted in removed or added:
        for number in range(span[0], span[1] + 1):
            if lines[number - 1].strip() == wanted.strip():
                return number
    return span[0]


def score(counts: Counter[str], equivalent: int) -> str:
    checked = sum(n for status, n in counts.items() if status not in ("not checked", "skipped", "interrupted"))
    real = checked - equivalent
    if real <= 0:
        return "–"
    return f"{100 * sum(counts[s] for s in KILLED) / real:.1f} %"


def earlier(text: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """From an earlier report: each module's table row and its section (lines), to keep where a run skips it."""
    rows: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("| `"):
            rows[line.split("`")[1]] = line
        if line.startswith("## "):
            current = sections.setdefault(line.split("`")[1], []) if line.startswith("## `") else None
        if current is not None:
            current.append(line)
    return rows, sections


def report(modules: list[str], tests: str, time_limit: str | None, notes: list[str] | None = None,
           keep: str | None = None) -> str:
    """The report of ``modules``; with ``keep`` (an earlier report's text) the modules it has that this run did
    not check keep their rows and sections, first."""
    equivalent = load_equivalent()
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# Mutation testing",
        "",
        f"Generated by `make mutate` (`benchmarks/mutation_report.py`) on {now}.",
        "",
        f"- machine: {machine()}",
        f"- mutmut {version('mutmut')}, Python {platform.python_version()}; each mutant is checked by the tests "
        "that ran the mutated function in mutmut's stats run (they stop at the first failure)",
        f"- tests: {tests or 'all of tests/'}",
        "- time limit: " + (f"{time_limit} s (mutants not reached stay 'not checked')" if time_limit else "none"),
        "- score = (killed + timed out or crashed) / (checked − equivalent); \"no tests\" mutants (no selected test "
        "runs the function) count as not killed",
        *(f"- {note}" for note in notes or []),
        "",
        "| module | mutants | killed | timeout or crash | survived | equivalent | no tests | not checked | score |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    sections: list[str] = []
    if keep is not None:
        rows, kept = earlier(keep)
        for module in [m for m in rows if m not in modules]:
            out.append(rows[module])
            sections += kept.get(module, [])
    for module in modules:
        mutants = load_mutants(module)
        counts = Counter(m.status for m in mutants)
        survivors = [m for m in mutants if m.status == "survived"]
        same = [m for m in survivors if m.name in equivalent]
        out.append(f"| `{module}` | {len(mutants)} | {counts['killed']} | {counts['timeout'] + counts['crashed']} | "
                   f"{counts['survived'] - len(same)} | {len(same)} | {counts['no tests']} | "
                   f"{counts['not checked']} | {score(counts, len(same))} |")
        if not mutants:
            sections += [f"## `{module}`", "", "No results (not in `[tool.mutmut] only_mutate`, or not run yet).", ""]
            continue
        sections += [f"## `{module}`", ""]
        if counts["no tests"]:
            functions = Counter(m.function for m in mutants if m.status == "no tests")
            sections += ["Functions no selected test runs (their mutants count as not killed): "
                         + ", ".join(f"`{f}` ({n})" for f, n in sorted(functions.items())) + ".", ""]
        if not survivors:
            sections += ["No surviving mutant.", ""]
            continue
        for title, group in (("Surviving mutants", [m for m in survivors if m not in same]),
                             ("Equivalent or harmless survivors", same)):
            if not group:
                continue
            sections += [f"### {title} ({len(group)})", ""]
            for m in group:
                diff = diff_of(m)
                line = source_line(m, diff)
                why = equivalent[m.name]["why"] if m in same else ""
                sections += [f"- `{m.module}:{line}` `{m.function}` (`{m.name.rsplit('.', 1)[-1]}`)"
                             + (f": {why}" if why else ""), "", "  ```diff",
                             *[f"  {d}" for d in diff.splitlines() if not d.startswith(("---", "+++"))], "  ```", ""]
    stale = sorted(set(equivalent) - {m.name for mod in modules for m in load_mutants(mod) if m.status == "survived"})
    stale = [n for n in stale if n.rsplit(".", 1)[0] in {mutmut_module(mod) for mod in modules}]
    if stale:
        sections += ["## Stale entries of `benchmarks/mutation_equivalent.toml`", "",
                     "Listed as equivalent but no longer surviving (killed, renamed or gone): "
                     + ", ".join(f"`{n}`" for n in stale) + ".", ""]
    return "\n".join([*out, "", *sections]).rstrip() + "\n"


def mutmut_module(module: str) -> str:
    """The dotted name mutmut gives ``module``'s mutants before ``.x_function__mutmut_N`` (a package's
    ``__init__.py`` is the package itself)."""
    dotted = module[:-3].replace("/", ".")
    return dotted.removesuffix(".__init__")


def module_pattern(module: str) -> str:
    """An fnmatch pattern for every mutant of ``module`` and of no other module (mutmut's names are
    ``package.module.x_function__mutmut_N`` and ``...xǁClassǁmethod__mutmut_N``; a package's own mutants
    must not take in its submodules')."""
    return f"{mutmut_module(module)}.x[_ǁ]*"


def pending(modules: list[str]) -> list[str]:
    """Mutants of ``modules`` not checked, surviving or without tests, less the listed equivalents that survived
    here (``mutants/`` is local: in a new checkout the equivalents too are checked once, to confirm they survive).

    A module or a function whose mutants are all pending is named by a pattern (:func:`module_pattern`,
    ``segflow.stitch.x_merge_chunk__mutmut_*``, matched by mutmut with fnmatch): thousands of names would
    not fit on one command line.
    """
    equivalent = load_equivalent()
    names: list[str] = []
    for module in modules:
        mutants = load_mutants(module)
        todo = {m.name for m in mutants  # a listed equivalent is re-checked only if this checkout never checked it
                if m.status == "not checked" or (m.status in ("survived", "no tests") and m.name not in equivalent)}
        if not mutants or len(todo) == len(mutants):  # none yet: a module new to only_mutate, generated by the run
            names.append(module_pattern(module))
            continue
        by_function: dict[str, list[str]] = {}
        for m in mutants:
            by_function.setdefault(m.name.rsplit("__mutmut_", 1)[0], []).append(m.name)
        for function, every in by_function.items():
            chosen = [n for n in every if n in todo]
            names += [f"{function}__mutmut_*"] if len(chosen) == len(every) > 1 else chosen
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="source files, e.g. segflow/tiling.py (default: only_mutate)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "mutation.md")
    parser.add_argument("--tests", default="", help="the test files the run selected (for the report)")
    parser.add_argument("--time-limit", default=None, help="the run's time limit in seconds (for the report)")
    parser.add_argument("--note", action="append", default=[], help="a line to add to the report's head")
    parser.add_argument("--keep", action="store_true",
                        help="keep the modules of the existing --output that this run did not check")
    parser.add_argument("--pending", action="store_true", help="print the names of the mutants still to check")
    parser.add_argument("--patterns", action="store_true", help="print a pattern for every mutant of each module")
    args = parser.parse_args()
    os.chdir(ROOT)  # mutmut reads mutants/ relative to the working directory
    modules = args.modules or tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]["only_mutate"]
    if args.pending or args.patterns:
        print(*(pending(modules) if args.pending else [module_pattern(m) for m in modules]))
        return
    every_test = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("**/test_*.py"))
    tests = "" if sorted(args.tests.split()) == every_test else args.tests
    keep = args.output.read_text(encoding="utf-8") if args.keep and args.output.exists() else None
    text = report(modules, tests, args.time_limit, args.note, keep)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
