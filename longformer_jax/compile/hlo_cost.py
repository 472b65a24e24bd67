"""FLOPs, HBM bytes and collectives of a compiled XLA program, loops counted in full.

``compiled.cost_analysis()`` counts the body of a ``while`` loop once, so a model
whose layers run under ``nnx.scan`` (or whose attention loops over query blocks)
is undercounted by the trip count. This module reads the optimised HLO text
(``compiled.as_text()``) instead and walks it from the entry computation:

* FLOPs: 2 x (output elements) x (contracted elements) per ``dot`` and
  ``convolution`` (inside fusions too), plus the ``cost_estimate`` a Pallas kernel
  declares on its custom call;
* HBM bytes: the operands and results of each instruction that runs on its own
  (fusions at their boundary) that live in HBM, where a fusion operand that is only
  sliced (``dynamic-slice``, ``slice``, ``gather``) counts as the slices it reads and an
  in-place ``dynamic-update-slice`` as the update it writes; arrays whose layout puts
  them in another memory space (``S(1)``: a TPU core's VMEM, where XLA's memory-space
  assignment prefetches operands and keeps intermediates) count only where an
  asynchronous copy moves them in or out of HBM (``copy-start``); bookkeeping ops
  (tuples, bitcasts, parameters, constants) move nothing;
* collectives (all-gather, all-reduce, reduce-scatter, collective-permute,
  all-to-all, each once per start/done pair) with their result bytes, and the bytes
  each device sends over the links by the ring algorithms (``wire_bytes``: an
  all-gather or all-to-all (n-1)/n of its result, a reduce-scatter (n-1)/n of its
  operand, an all-reduce twice that, a permute its whole result; n the size of the
  replica group), split into asynchronous ones (``-start`` / ``-done`` pairs, which
  the schedule can overlap with compute) and synchronous ones (which it cannot);

each multiplied by the trip counts of the loops around it (read off the loop's
condition: ``i < constant``, ``i`` starting from the init tuple's constant).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re

_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2,
                "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8,
                "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
# An array with its layout: ``bf16[4096,768]{1,0:T(8,128)(2,1)S(1)}``; ``S(n)``, n > 0,
# places it outside HBM (on TPU: 1 VMEM, 2 SMEM...), where reads and writes are not HBM
# traffic.
_LAID_OUT = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\](\{[^}]*\})?")
_MEMORY_SPACE = re.compile(r"S\((\d+)\)")
_HEADER = re.compile(r"^(?:ENTRY )?%(\S+) \(.*\) -> .*\{$")
_INSTR = re.compile(r"^\s*(?:ROOT )?%(\S+) = ")
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute",
               "all-to-all")
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all",
         "partition-id", "replica-id", "iota", "opt-barrier", "add-dependency",
         "copy-done", "send-done", "recv-done", "all-gather-done", "all-reduce-done",
         "collective-permute-done", "async-done", "async-update"}
_SLICES = {"dynamic-slice", "slice", "gather"}
# Bytes a device sends per byte a collective moves, by ring algorithms over n devices.
_WIRE_FACTOR = {"all-gather": lambda n: (n - 1) / n, "reduce-scatter": lambda n: (n - 1) / n,
                "all-to-all": lambda n: (n - 1) / n, "all-reduce": lambda n: 2 * (n - 1) / n,
                "collective-permute": lambda n: 1.0}


def _group_size(instr) -> int:
  """Devices in each replica group of a collective: ``replica_groups={{0,1},{2,3}}``,
  the iota form ``replica_groups=[groups,size]<=[...]`` or the mesh-axes form
  ``replica_groups=mesh['axis_0'=2,'axis_1'=2] {'axis_0'}`` (size 2 for all three)."""
  m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", instr.attrs)
  if m:
    sizes = dict(re.findall(r"'([^']+)'=(\d+)", m.group(1)))
    return math.prod(int(sizes.get(a, 1)) for a in re.findall(r"'([^']+)'", m.group(2)))
  m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", instr.attrs)
  if m:
    return int(m.group(2))
  m = re.search(r"replica_groups=\{\{([^}]*)\}", instr.attrs)
  if m and m.group(1).strip():
    return len(m.group(1).split(","))
  return 1 << 30  # no groups written: all devices, a count the text does not give: (n-1)/n ~ 1


def _array_bytes(type_str: str) -> float:
  total = 0.0
  for dtype, dims in _ARRAY.findall(type_str):
    if dtype in _DTYPE_BYTES:
      total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
  return total


def _arrays(type_str: str) -> list[tuple[float, bool]]:
  """(bytes, in HBM) of each array of a (tuple) type."""
  out = []
  for dtype, dims, layout in _LAID_OUT.findall(type_str):
    if dtype in _DTYPE_BYTES:
      space = _MEMORY_SPACE.search(layout or "")
      out.append((_DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d),
                  space is None or space.group(1) == "0"))
  return out


def _hbm_bytes(type_str: str) -> float:
  """The bytes of a type's arrays that live in HBM (the default memory space)."""
  return sum(n for n, hbm in _arrays(type_str) if hbm)


def _in_hbm(type_str: str) -> bool:
  arrays = _arrays(type_str)
  return not arrays or arrays[0][1]


def _dims(type_str: str) -> list[int]:
  m = _ARRAY.search(type_str)
  return [int(d) for d in m.group(2).split(",") if d] if m else []


def _matching(s: str, start: int) -> int:
  """Index just past the bracket closing the one at ``s[start]``."""
  pairs = {"(": ")", "{": "}", "[": "]"}
  depth, close = 0, pairs[s[start]]
  for i in range(start, len(s)):
    if s[i] == s[start]:
      depth += 1
    elif s[i] == close:
      depth -= 1
      if depth == 0:
        return i + 1
  return len(s)


@dataclasses.dataclass
class Instr:
  name: str
  type: str
  op: str
  operands: list[str]
  attrs: str
  args: str = ""  # the text between the op's parentheses (a constant's literal...)

  def literal(self) -> int | None:
    """A scalar integer constant's value (or a parameter's index)."""
    try:
      return int(self.args.strip())
    except ValueError:
      return None

  def attr(self, key: str) -> str | None:
    m = re.search(rf"\b{key}=(%?[\w.\-]+|\{{[^}}]*\}})", self.attrs)
    return m.group(1) if m else None

  def called(self) -> list[str]:
    names = []
    for key in ("calls", "to_apply", "body", "condition", "branch_computations",
                "async_execution_thread_computation"):
      value = self.attr(key)
      if value:
        names += [n.lstrip("%") for n in re.split(r"[{},\s]+", value) if n.strip("%")]
    return names


def _parse_instr(line: str) -> Instr | None:
  m = _INSTR.match(line)
  if not m:
    return None
  rest = line[m.end():]
  if rest.startswith("("):
    end = _matching(rest, 0)
  else:
    end = rest.find(" ")
  type_str, rest = rest[:end], rest[end:].lstrip()
  op_end = rest.find("(")
  if op_end < 0:
    return None
  op = rest[:op_end]
  close = _matching(rest, op_end)
  operands = re.findall(r"%([\w.\-]+)", rest[op_end:close])
  return Instr(m.group(1), type_str, op, operands, rest[close:], rest[op_end + 1:close - 1])


def parse(hlo_text: str) -> tuple[dict[str, list[Instr]], str]:
  """{computation: instructions} of an HLO module's text, and the entry's name."""
  comps: dict[str, list[Instr]] = {}
  entry, current = "", None
  for line in hlo_text.splitlines():
    header = _HEADER.match(line)
    if header:
      current = header.group(1)
      comps[current] = []
      if line.startswith("ENTRY"):
        entry = current
    elif line == "}":
      current = None
    elif current is not None:
      instr = _parse_instr(line)
      if instr is not None:
        comps[current].append(instr)
  return comps, entry


def _dot_flops(instr: Instr, shapes: dict[str, str]) -> float:
  out = math.prod(_dims(instr.type))
  lhs = _dims(shapes.get(instr.operands[0], ""))
  if instr.op == "dot":
    dims = instr.attr("lhs_contracting_dims") or "{}"
    contracted = math.prod(lhs[int(d)] for d in re.findall(r"\d+", dims))
    return 2.0 * out * contracted
  # convolution: each output element takes (input features) x (window taps); XLA
  # writes batched products as convolutions whose window is dilated to one tap.
  rhs = _dims(shapes.get(instr.operands[1], ""))
  m = re.search(r"dim_labels=([\w>-]+)", instr.attrs)
  labels = (m.group(1) if m else "").split("_")
  kernel = labels[1].split("->")[0] if len(labels) >= 2 else ""
  features = rhs[kernel.index("i")] if "i" in kernel and len(kernel) == len(rhs) else 1
  window = instr.attr("window") or ""
  sizes = _window_field(window, "size")
  dilate = _window_field(window, "lhs_dilate") or [1] * len(sizes)
  taps = math.prod(-(-s // d) for s, d in zip(sizes, dilate))
  return 2.0 * out * features * taps


def _window_field(window: str, key: str) -> list[int]:
  m = re.search(rf"\b{key}=([0-9x]+)", window)
  return [int(v) for v in m.group(1).split("x")] if m else []


def _custom_call_flops(instr: Instr) -> float:
  """The FLOPs a Pallas kernel declares (``pl.CostEstimate``), 0 for other calls."""
  m = re.search(r'cost_estimate[\\"]*:\s*\{[^}]*?flops[\\"]*:\s*"?(\d+)', instr.attrs)
  return float(m.group(1)) if m else 0.0


@dataclasses.dataclass
class Cost:
  """Totals of a program (or a computation), loops counted in full."""

  flops: float = 0.0
  bytes: float = 0.0
  collectives: dict = dataclasses.field(default_factory=dict)  # op -> [count, bytes]
  by_op: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  unknown_loops: int = 0
  wire_bytes: float = 0.0  # sent per device by asynchronous collectives
  wire_bytes_sync: float = 0.0  # ... by synchronous ones

  def add(self, other: "Cost", times: float = 1.0, with_bytes: bool = True) -> None:
    self.flops += times * other.flops
    self.unknown_loops += other.unknown_loops
    if not with_bytes:
      return
    self.bytes += times * other.bytes
    self.wire_bytes += times * other.wire_bytes
    self.wire_bytes_sync += times * other.wire_bytes_sync
    for op, (count, nbytes) in other.collectives.items():
      entry = self.collectives.setdefault(op, [0, 0.0])
      entry[0] += times * count
      entry[1] += times * nbytes
    for key, value in other.by_op.items():
      self.by_op[key] += times * value


class _Walker:
  def __init__(self, hlo_text: str):
    self.comps, self.entry = parse(hlo_text)
    self.memo: dict[str, Cost] = {}

  def cost(self, name: str) -> Cost:
    if name not in self.memo:
      self.memo[name] = Cost()  # a recursion guard; HLO has no recursion
      self.memo[name] = self._cost(self.comps.get(name, []))
    return self.memo[name]

  def _cost(self, instrs: list[Instr]) -> Cost:
    shapes = {i.name: i.type for i in instrs}
    consts = {i.name: i for i in instrs if i.op == "constant"}
    total = Cost()
    for instr in instrs:
      op = instr.op
      if op in ("dot", "convolution"):
        total.flops += _dot_flops(instr, shapes)
      elif op == "custom-call":
        total.flops += _custom_call_flops(instr)
      if op == "while":
        trips = self._trips(instr, consts, instrs)
        if trips is None:
          total.unknown_loops += 1
          trips = 1
        total.add(self.cost(instr.attr("body").lstrip("%")), trips)
        continue
      if op == "fusion":
        callee = instr.attr("calls").lstrip("%")
        total.add(self.cost(callee), with_bytes=False)
        nbytes = self._fusion_bytes(instr, shapes, self.comps.get(callee, []))
      elif op == "copy-start":  # an asynchronous copy between memory spaces: HBM to VMEM
        # (a prefetch, read once) or back (an eviction, written once); result (dst, src, ctx)
        dst = _arrays(instr.type)[:1]
        nbytes = _hbm_bytes(shapes.get(instr.operands[0], "")) + sum(
            n for n, hbm in dst if hbm)
      elif op in ("call", "conditional", "async-start") or (op.endswith("-start") and
                                                              op[:-6] not in COLLECTIVES):
        for callee in instr.called():
          total.add(self.cost(callee))
        continue
      elif op in _FREE or op.endswith("-done"):
        continue
      elif op in _SLICES:  # the slice read from its operand, written as the result
        nbytes = _array_bytes(instr.type) * (_in_hbm(shapes.get(instr.operands[0], ""))
                                             + _in_hbm(instr.type))
      elif op == "dynamic-update-slice":  # the update read, written into the operand
        update = shapes.get(instr.operands[1], "")
        nbytes = _array_bytes(update) * (_in_hbm(update)
                                         + _in_hbm(shapes.get(instr.operands[0], "")))
      else:
        nbytes = _hbm_bytes(instr.type) + sum(
            _hbm_bytes(shapes.get(o, "")) for o in instr.operands)
      kind = op[:-6] if op.endswith("-start") else op
      if kind in COLLECTIVES:
        entry = total.collectives.setdefault(kind, [0, 0.0])
        entry[0] += 1
        moved = _array_bytes(instr.type) if kind != "reduce-scatter" else sum(
            _array_bytes(shapes.get(o, "")) for o in instr.operands)
        entry[1] += moved
        wire = moved * _WIRE_FACTOR[kind](_group_size(instr))
        if op.endswith("-start"):
          total.wire_bytes += wire
        else:
          total.wire_bytes_sync += wire
      total.bytes += nbytes
      total.by_op[_label(instr)] += nbytes
    return total

  def _trips(self, instr: Instr, consts: dict, instrs: list[Instr]) -> int | None:
    """A loop's trip count: XLA's ``known_trip_count`` where it wrote one, else read
    off the condition (``i < constant``, i from the init tuple's constant)."""
    known = re.search(r'"known_trip_count":\{"n":"(\d+)"', instr.attrs)
    if known:
      return int(known.group(1))
    cond = self.comps.get((instr.attr("condition") or "").lstrip("%"), [])
    cond_consts = {i.name: i.literal() for i in cond if i.op == "constant"}
    root = cond[-1] if cond else None
    compare = root
    if root is not None and root.op == "fusion":  # a compare wrapped in a fusion
      body = self.comps.get(root.attr("calls").lstrip("%"), [])
      compare = body[-1] if body else None
    if compare is None or compare.op != "compare" or "direction=LT" not in compare.attrs:
      return None
    limit = next((cond_consts[o] for o in root.operands if o in cond_consts), None)
    if limit is None:
      return None
    start = 0
    init = next((i for i in instrs if i.name == instr.operands[0]), None)
    if init is not None and init.op == "tuple" and init.operands:
      first = consts.get(init.operands[0])
      start = first.literal() if first is not None else 0
    step = self._step(instr.attr("body").lstrip("%"))
    return max(-(-(limit - (start or 0)) // step), 0)

  def _step(self, body_name: str) -> int:
    """The induction variable's increment in a loop body (an unrolled loop steps by
    its unroll factor): ROOT tuple element 0 = add(i, constant)."""
    body = self.comps.get(body_name, [])
    if not body or body[-1].op != "tuple" or not body[-1].operands:
      return 1
    named = {i.name: i for i in body}
    update = named.get(body[-1].operands[0])
    if update is None or update.op != "add":
      return 1
    steps = [named[o].literal() for o in update.operands
             if o in named and named[o].op == "constant"]
    return steps[0] if steps and steps[0] and steps[0] > 0 else 1

  def _sliced_read(self, name: str, users: list[Instr]) -> float | None:
    """The bytes a fusion parameter's users read of it when every one only slices it
    (directly, or as the parameter of a nested fusion that only slices it); None when
    one reads it whole."""
    if not users:
      return None
    total = 0.0
    for user in users:
      if user.op in _SLICES and user.operands[0] == name:
        total += _array_bytes(user.type)
        continue
      if user.op != "fusion":
        return None
      body = self.comps.get((user.attr("calls") or "").lstrip("%"), [])
      for position, operand in enumerate(user.operands):
        if operand != name:
          continue
        inner = next((i.name for i in body if i.op == "parameter"
                      and i.literal() == position), None)
        part = None if inner is None else self._sliced_read(
            inner, [i for i in body if inner in i.operands])
        if part is None:
          return None
        total += part
    return total

  def _fusion_bytes(self, instr: Instr, shapes: dict, body: list[Instr]) -> float:
    """A fusion's HBM traffic: its result and operands, an operand that the body only
    slices counted as the slices, an in-place update as the update."""
    params = {i.name: i.literal() for i in body if i.op == "parameter"}
    uses = collections.defaultdict(list)
    for i in body:
      for o in i.operands:
        if o in params:
          uses[o].append(i)
    out = _hbm_bytes(instr.type)
    root = body[-1] if body else None
    read = 0.0
    for name, index in params.items():
      if index is None or index >= len(instr.operands):
        continue
      full = _hbm_bytes(shapes.get(instr.operands[index], ""))
      users = uses.get(name, [])
      sliced = self._sliced_read(name, users)
      if sliced is not None:
        read += min(full, sliced)  # 0 if not in HBM
      elif (root is not None and root.op == "dynamic-update-slice" and users == [root]
            and root.operands[0] == name):
        pass  # updated in place: only the update is written (below)
      else:
        read += full
    if root is not None and root.op == "dynamic-update-slice":
      update = next((i for i in body if i.name == root.operands[1]), None)
      if update is not None:
        out = min(out, _array_bytes(update.type))
    return out + read


def _label(instr: Instr) -> str:
  """An instruction's op and the JAX operation it came from (its metadata)."""
  m = re.search(r'op_name="([^"]*)"', instr.attrs)
  where = m.group(1).split("/")[-1] if m else ""
  return f"{instr.op}:{where}" if where else instr.op


def analyze(hlo_text: str) -> Cost:
  """Loop-aware FLOPs, HBM bytes and collectives of an optimised HLO module's text."""
  walker = _Walker(hlo_text)
  return walker.cost(walker.entry)


def summary(cost: Cost, top: int = 8) -> dict:
  """A JSON-able summary: totals, collectives, the ops that move the most bytes."""
  return {"flops": cost.flops, "bytes": cost.bytes, "unknown_trip_counts": cost.unknown_loops,
          "wire_bytes": cost.wire_bytes, "wire_bytes_sync": cost.wire_bytes_sync,
          "collectives": {k: {"count": int(c), "bytes": b}
                          for k, (c, b) in sorted(cost.collectives.items())},
          "top_bytes": [{"op": k, "bytes": v} for k, v in cost.by_op.most_common(top)]}


