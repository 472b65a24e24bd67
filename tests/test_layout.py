"""The package's module layout: no import cycles, and the data code never imports tasks.

The graph is read from the source with ``ast``, not by importing: every ``import`` and
``from ... import`` counts, function-local ones included (a local import that closes a
cycle only moves the cycle to run time), relative ones resolved against the importer.

Edges, for a module M importing T (a module of ``longformer_jax``):

* M -> T. ``from P import x`` where ``P.x`` is a submodule is M -> ``P.x``; where ``x``
  is a name P defines it is M -> P (P must have run to hold ``x``).
* M -> each package above T that is not also above M: importing
  ``longformer_jax.tasks.base`` from ``longformer_jax.data.conll`` runs
  ``longformer_jax/tasks/__init__.py`` first. Packages above M are left out: they are
  already running (or done) when M runs, so a package ``__init__`` importing its own
  submodules, and those importing their siblings, is no cycle. The root package is
  above every module, so only a name read from it (``from longformer_jax import
  LongformerConfig``) makes an edge to it.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent / "longformer_jax"
PACKAGE = ROOT.name


def modules(root: pathlib.Path = ROOT) -> dict[str, pathlib.Path]:
  """Dotted module name -> file, for every module of the package."""
  out = {}
  for path in sorted(root.rglob("*.py")):
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts.pop()
    out[".".join(parts)] = path
  return out


def _imports(name: str, path: pathlib.Path, mods: dict):
  """(target, line, reads_name) for every import of the module: ``reads_name`` when
  ``from target import x`` takes a name that is no submodule."""
  is_package = path.name == "__init__.py"
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield alias.name, node.lineno, False
    elif isinstance(node, ast.ImportFrom):
      source = node.module or ""
      if node.level:
        base = name.split(".")
        base = base[:len(base) - node.level + (1 if is_package else 0)]
        source = ".".join(base + ([node.module] if node.module else []))
      for alias in node.names:
        sub = f"{source}.{alias.name}"
        yield (sub, node.lineno, False) if sub in mods else (source, node.lineno, True)


def import_graph(root: pathlib.Path = ROOT) -> dict[str, dict[str, int]]:
  """module -> {imported module: first line}, with the package edges described above."""
  mods = modules(root)
  package = root.name
  graph: dict[str, dict[str, int]] = {m: {} for m in mods}
  for name, path in mods.items():
    parts = name.split(".")
    own = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}  # running already
    for target, line, reads_name in _imports(name, path, mods):
      if target != package and not target.startswith(package + "."):
        continue
      while target not in mods:  # ``import pkg.mod.attr``: the module part
        target = target.rpartition(".")[0]
      tparts = target.split(".")
      above = [".".join(tparts[:i]) for i in range(1, len(tparts))]
      for t in [p for p in above if p not in own] + [target]:
        if t != name and (t not in own or (t == target and reads_name)):
          graph[name].setdefault(t, line)
  return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[tuple[list[str], list[str]]]:
  """(its modules, one cycle through them) for every strongly connected component of
  more than one module (or a module importing itself)."""
  index, low, stack, on_stack, comps = {}, {}, [], set(), []

  def connect(v):  # Tarjan's algorithm; the graph is small enough for recursion
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        connect(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1 or v in graph[v]:
        comps.append(set(comp))

  for v in sorted(graph):
    if v not in index:
      connect(v)
  return [(sorted(comp), _path_back(graph, comp, min(comp))) for comp in comps]


def _path_back(graph, comp, start) -> list[str]:
  """A shortest path start -> ... -> start inside ``comp`` (breadth first)."""
  parent, frontier = {}, [start]
  while frontier:
    nxt = []
    for v in frontier:
      for w in sorted(graph[v]):
        if w not in comp:
          continue
        if w == start:
          path = [v]
          while path[-1] != start:
            path.append(parent[path[-1]])
          return path[::-1] + [start]
        if w not in parent:
          parent[w] = v
          nxt.append(w)
    frontier = nxt
  raise AssertionError(f"{start} is on no cycle")


def _describe(graph, path: list[str]) -> str:
  return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(path, path[1:])) + \
      f" -> {path[-1]}"


def test_graph_sees_local_relative_and_package_imports(tmp_path):
  pkg = tmp_path / PACKAGE
  (pkg / "sub").mkdir(parents=True)
  (pkg / "__init__.py").write_text("from longformer_jax import a\n")
  (pkg / "a.py").write_text("def f():\n  from .sub import b\n")
  (pkg / "sub" / "__init__.py").write_text("from . import b\n")
  (pkg / "sub" / "b.py").write_text("from longformer_jax.sub import c\nimport os\n")
  (pkg / "sub" / "c.py").write_text("import longformer_jax\n\nfrom .. import a, VERSION\n")
  graph = import_graph(pkg)
  assert graph[PACKAGE] == {f"{PACKAGE}.a": 1}
  assert graph[f"{PACKAGE}.a"] == {f"{PACKAGE}.sub": 2, f"{PACKAGE}.sub.b": 2}
  assert graph[f"{PACKAGE}.sub"] == {f"{PACKAGE}.sub.b": 1}
  assert graph[f"{PACKAGE}.sub.b"] == {f"{PACKAGE}.sub.c": 1}
  assert graph[f"{PACKAGE}.sub.c"] == {f"{PACKAGE}.a": 3, PACKAGE: 3}
  found = cycles(graph)
  assert [members for members, _ in found] == [
      [PACKAGE, f"{PACKAGE}.a", f"{PACKAGE}.sub", f"{PACKAGE}.sub.b", f"{PACKAGE}.sub.c"]]
  assert found[0][1] == [PACKAGE, f"{PACKAGE}.a", f"{PACKAGE}.sub.b", f"{PACKAGE}.sub.c",
                         PACKAGE]


def test_no_import_cycles():
  graph = import_graph()
  found = cycles(graph)
  assert not found, "import cycles in the package:\n" + "\n".join(
      f"{len(members)} modules ({', '.join(members)}), e.g. {_describe(graph, path)}"
      for members, path in found)


def test_data_does_not_import_tasks():
  data, tasks = f"{PACKAGE}.data", f"{PACKAGE}.tasks"
  bad = [f"{m} (line {line}) -> {t}" for m, targets in import_graph().items()
         for t, line in targets.items()
         if (m == data or m.startswith(data + ".")) and (t == tasks or t.startswith(tasks + "."))]
  assert not bad, "the data code imports the tasks:\n" + "\n".join(sorted(bad))
