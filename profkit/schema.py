"""The store's schema: one definition that creates the tables, documents them
(`docs/schema.md`, `profkit schema`) and is checked by the tests.

Every time is an integer number of nanoseconds on the trace's own clock.
"""
from __future__ import annotations

from dataclasses import dataclass, field

SCHEMA_VERSION = 2  # 2: ingest_issues.unusable

# The closed set of event kinds every parser maps onto.
EVENT_KINDS = (
    "cpu_op",          # framework operator on a host thread (aten::mm)
    "python",          # Python function frame
    "annotation",      # host range: record_function, NVTX, roctx, ProfilerStep
    "runtime",         # CUDA/HIP/accelerator runtime or driver API call on a host thread
    "kernel",          # device compute (or communication) kernel
    "memcpy",          # device copy
    "memset",          # device fill
    "sync",            # device-side or host-blocking synchronisation record
    "gpu_annotation",  # range drawn on a device stream (gpu_user_annotation)
)
DEVICE_KINDS = ("kernel", "memcpy", "memset", "gpu_annotation")

CATEGORIES = (
    "gemm", "attention", "communication", "elementwise", "reduction",
    "normalization", "memory", "other",
)

LINK_KINDS = ("launch", "flow", "sync", "event_wait", "fwdbwd")


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    doc: str
    unit: str = ""
    # DuckDB compression for a store file (DuckDB's choice when empty). A physical detail,
    # not part of the schema: in memory DuckDB has no ZSTD and would store it uncompressed.
    file_compression: str = ""
    # Likewise for an in-memory store, which compresses only at a CHECKPOINT.
    memory_compression: str = ""
    # A DEFAULT for rows inserted without the column (SQL literal; none when empty).
    default: str = ""


@dataclass(frozen=True)
class Table:
    name: str
    doc: str
    columns: tuple[Column, ...]
    grain: str = ""


@dataclass(frozen=True)
class View:
    name: str
    doc: str
    sql: str
    columns: tuple[Column, ...] = field(default_factory=tuple)


C = Column

TABLES: tuple[Table, ...] = (
    Table("meta", "Store-level facts: schema version, profkit version.", (
        C("key", "VARCHAR", "Name of the fact, e.g. `schema_version`."),
        C("value", "VARCHAR", "Its value, as text."),
    ), grain="fact"),
    Table("traces", "Ingested inputs (usually one rank's file each).", (
        C("trace_id", "INTEGER", "Key of the trace within this store."),
        C("path", "VARCHAR", "Absolute path of the input file or directory; where one file holds "
          "several traces, `#` and which (`#pid145`: an Nsight report's process, one trace per process "
          "that drove a device; `#0`, `#GUID`: a rocprof process). A trace read from a stream has the name "
          "it was given: `<stdin>` for standard input, the pipe's path otherwise."),
        C("format", "VARCHAR", "Input format: `kineto`, `nsys`, `rocprof_v1`, `rocprofv3_csv`, `rocprofv3_json`, `rocpd`, ..."),
        C("format_version", "VARCHAR", "Version the input declares (Kineto schemaVersion, Nsight export schema, rocpd schema)."),
        C("producer", "VARCHAR", "Tool and version that wrote the input where it says (e.g. `Nsight Systems 2024.5.1`, `roctracer 4.1`)."),
        C("vendor", "VARCHAR", "Device vendor of the trace: `nvidia`, `amd`, `intel`, `other`, or NULL for CPU-only traces."),
        C("rank", "INTEGER", "Distributed rank of the process that wrote the trace."),
        C("rank_source", "VARCHAR", "Where `rank` came from: `distributedInfo`, `filename`, `order`, `metadata`."),
        C("world_size", "INTEGER", "Number of ranks in the job, where the trace says."),
        C("hostname", "VARCHAR", "Host that recorded the trace, where known."),
        C("clock_offset_ns", "BIGINT", "Add to a trace's times to put it on the common clock of the store (aligns ranks).", "ns"),
        C("base_time_ns", "BIGINT", "Unix epoch time of the trace clock's zero, where known (Kineto `baseTimeNanoseconds`).", "ns"),
        C("start_ns", "BIGINT", "Earliest event start in the trace.", "ns"),
        C("end_ns", "BIGINT", "Latest event end in the trace.", "ns"),
        C("event_count", "BIGINT", "Rows this trace has in `events`."),
        C("issue_count", "BIGINT", "Input records not stored as events, summed over `ingest_issues`."),
        C("source_records", "BIGINT", "Records the parser read from the input; `event_count` + records kept elsewhere (metadata, counters, flows) + `issue_count` account for it."),
        C("file_bytes", "BIGINT", "Size of the input on disk.", "bytes"),
        C("file_mtime_ns", "BIGINT", "Modification time of the input when ingested (for cache checks).", "ns"),
        C("ingest_seconds", "DOUBLE", "Wall time the ingest took.", "s"),
        C("metadata", "JSON", "Top-level metadata the parser kept (never the profiled process's environment)."),
    ), grain="input"),
    Table("devices", "Accelerators a trace names or uses.", (
        C("trace_id", "INTEGER", "The trace."),
        C("device", "INTEGER", "Device id as used by `events.device` (GPU index; for rocprof the GPU ordinal, not the HSA node). "
                                "ROCm Kineto traces give activities the HSA node id: when a trace's one deviceProperties entry "
                                "and its one device in use differ, the activities are stored under the ordinal "
                                "(ingest_issues says so)."),
        C("node_id", "INTEGER", "Vendor node id where it differs from the ordinal (rocprof HSA agent node id; "
                                "the id ROCm Kineto activities carry)."),
        C("vendor", "VARCHAR", "`nvidia`, `amd`, `intel`, or `other`."),
        C("name", "VARCHAR", "Product name (`NVIDIA H100 80GB HBM3`, `AMD Instinct MI300X`)."),
        C("arch", "VARCHAR", "Architecture (`sm_90`, `gfx942`)."),
        C("sm_count", "INTEGER", "Streaming multiprocessors (NVIDIA) or compute units (AMD): the units a "
          "thread block or work-group runs on. NULL for Intel XPU, whose traces give execution units "
          "(`maxComputeUnits`, several per Xe-core; kept in `properties`)."),
        C("warp_size", "INTEGER", "Threads per warp / wavefront."),
        C("memory_bytes", "BIGINT", "Device memory.", "bytes"),
        C("memory_bandwidth_bytes_per_s", "DOUBLE", "Peak memory bandwidth where known.", "bytes/s"),
        C("clock_hz", "BIGINT", "Core clock where known.", "Hz"),
        C("link_bandwidth_bytes_per_s", "DOUBLE", "Peak per-device interconnect bandwidth (NVLink / Infinity Fabric) where known.", "bytes/s"),
        C("properties", "JSON", "Every property the input gave, as written."),
    ), grain="device"),
    Table("threads", "Names of processes and threads (host) and of device lanes, from trace metadata.", (
        C("trace_id", "INTEGER", "The trace."),
        C("pid", "BIGINT", "Process id (for device lanes in Kineto, the device)."),
        C("tid", "BIGINT", "Thread id (for device lanes, the stream); NULL for a process-level name."),
        C("name", "VARCHAR", "Name given by the trace."),
        C("sort_index", "BIGINT", "Display order given by the trace, where present."),
    ), grain="named process or thread"),
    Table("events", "Every timed interval (and instant) on a host thread or device stream.", (
        C("event_id", "BIGINT", "Key of the event, unique in the store."),
        C("trace_id", "INTEGER", "The trace."),
        C("kind", "VARCHAR", "One of: " + ", ".join(f"`{k}`" for k in EVENT_KINDS) + "."),
        C("name", "VARCHAR", "Operator, API call, kernel or range name as recorded (demangled where the input gives it)."),
        C("start_ns", "BIGINT", "Start on the trace clock.", "ns"),
        C("dur_ns", "BIGINT", "Duration (0 for instants).", "ns"),
        C("end_ns", "BIGINT", "`start_ns + dur_ns`.", "ns"),
        C("pid", "BIGINT", "Host process (for device events, the process that launched them where known)."),
        C("tid", "BIGINT", "Host thread; NULL for device events."),
        C("device", "INTEGER", "Device ordinal for device events (and for runtime calls where the input says)."),
        C("stream", "BIGINT", "Device stream / queue for device events; -1 for a device-side record on no "
          "stream (an event or context synchronisation)."),
        C("correlation", "BIGINT", "Runtime correlation id that joins a launch call to its device activity (unique per trace and process)."),
        C("external_id", "BIGINT", "Framework external id (Kineto `External id`) joining an operator to its runtime calls."),
        C("parent_id", "BIGINT", "Innermost enclosing event on the same host thread (or device stream), NULL at top level."),
        # 0 until derive.nest updates the nested few: an UPDATE of every top-level row cost
        # 57 ms at 2M events.
        C("depth", "INTEGER", "Nesting depth on its thread or stream (0 = top level).", default="0"),
        C("step", "INTEGER", "Step (iteration) the event belongs to, from `steps`; device events take their launch's step."),
        C("category", "VARCHAR", "Shared classifier's category for device work: " + ", ".join(f"`{c}`" for c in CATEGORIES) + "; for host events, NULL."),
        C("source_cat", "VARCHAR", "The input's own category for the record (Kineto `cat`, Nsight table, rocprof domain)."),
        C("args", "JSON", "Every other field the input gave for the record, as a JSON object (its values as "
                          "written; spacing, and for some inputs number and escape spelling, may differ).",
          # Copying a 5M-event store to a file: 1.7 CPU-s and 37 MB for this column, against
          # 3.4 CPU-s and 101 MB with DuckDB's choice (dictionary + FSST); reads as fast.
          file_compression="zstd",
          # In memory, the checkpoints that bound a large ingest's memory spent most of their
          # time compressing this column (dictionary + FSST). Left as text: the 5M-event
          # tile loads in 6.8-7.1 s against 7.8-7.9 s, its first analysis in 16.8-17.1 s
          # against 18.0-18.3 s, for ~0.15 GB more at the peak (1.6x the JSON).
          memory_compression="uncompressed"),
    ), grain="event"),
    Table("kernel_info", "Launch configuration of kernels.", (
        C("event_id", "BIGINT", "The kernel event."),
        C("grid_x", "INTEGER", "Grid size in blocks (x); grids a profiler gives in work-items (rocprof, and Kineto for launch calls of role `grid_in_work_items`) are divided by the block size, rounding up."), C("grid_y", "INTEGER", "Grid size (y)."), C("grid_z", "INTEGER", "Grid size (z)."),
        C("block_x", "INTEGER", "Block size in threads (x)."), C("block_y", "INTEGER", "Block size (y)."), C("block_z", "INTEGER", "Block size (z)."),
        C("registers_per_thread", "INTEGER", "Registers per thread (VGPRs on AMD)."),
        C("shared_memory_bytes", "BIGINT", "Static plus dynamic shared memory (LDS on AMD) per block.", "bytes"),
        C("blocks_per_sm", "DOUBLE", "Blocks per SM as the profiler computed it."),
        C("warps_per_sm", "DOUBLE", "Warps per SM as the profiler computed it."),
        C("occupancy_pct", "DOUBLE", "Estimated achieved occupancy.", "%"),
        C("graph_id", "BIGINT", "CUDA/HIP graph the kernel was launched from, where known."),
        C("graph_node_id", "BIGINT", "Graph node id, where known (set for graph-launched kernels)."),
    ), grain="kernel event"),
    Table("copies", "Bytes and direction of memcpy and memset events.", (
        C("event_id", "BIGINT", "The memcpy or memset event."),
        C("bytes", "BIGINT", "Bytes moved or set.", "bytes"),
        C("direction", "VARCHAR", "`HtoD`, `DtoH`, `DtoD`, `HtoH`, `PtoP`, or `memset`."),
        C("src_memory", "VARCHAR", "Source memory kind: `pageable`, `pinned`, `device`, `managed`, `array`, or NULL if unknown."),
        C("dst_memory", "VARCHAR", "Destination memory kind, as `src_memory`."),
    ), grain="copy event"),
    Table("collectives", "Communication kernels with what the input says of the collective.", (
        C("event_id", "BIGINT", "The communication kernel event."),
        C("op", "VARCHAR", "`all_reduce`, `all_gather`, `reduce_scatter`, `all_to_all`, `broadcast`, `reduce`, `send`, `recv`, `send_recv`, or `other`."),
        C("bytes", "BIGINT", "Message size per rank (input side), where known.", "bytes"),
        C("in_elems", "BIGINT", "Input elements per rank, where known."),
        C("out_elems", "BIGINT", "Output elements per rank, where known."),
        C("dtype", "VARCHAR", "Element type, where known."),
        C("group_size", "INTEGER", "Ranks in the communicator."),
        C("group_ranks", "VARCHAR", "Global ranks in the communicator, as a JSON list, where known."),
        C("process_group", "VARCHAR", "Process group name."),
        C("process_group_desc", "VARCHAR", "Process group description (e.g. `default_pg`)."),
        C("seq", "BIGINT", "Sequence number of the collective in its process group, where known."),
    ), grain="communication kernel"),
    Table("links", "Dependencies the input records between events.", (
        C("trace_id", "INTEGER", "The trace."),
        C("src_event", "BIGINT", "Event that must happen first (the launch call, the flow's start)."),
        C("dst_event", "BIGINT", "Event that depends on it (the kernel, the flow's end)."),
        C("kind", "VARCHAR", "One of: " + ", ".join(f"`{k}`" for k in LINK_KINDS) + "."),
        C("correlation", "BIGINT", "The id that made the link (correlation id, flow id)."),
    ), grain="dependency"),
    Table("counters", "Sampled values (memory in use, queue depth, ...): a Kineto trace's C records, and "
          "its allocator samples (`profile_memory=True`) as `[memory].Total Allocated` and `[memory].Total "
          "Reserved`, bytes after each allocation or free, per device (NULL: the CPU).", (
        C("trace_id", "INTEGER", "The trace."),
        C("name", "VARCHAR", "Counter name (with the series name where the input has several)."),
        C("pid", "BIGINT", "Process the counter belongs to."),
        C("device", "INTEGER", "Device, where the counter is per device."),
        C("ts_ns", "BIGINT", "Sample time.", "ns"),
        C("value", "DOUBLE", "Sampled value, in the input's unit."),
    ), grain="sample"),
    Table("steps", "Iterations: from `ProfilerStep#N`, NVTX/roctx ranges, or inferred.", (
        C("trace_id", "INTEGER", "The trace."),
        C("step", "INTEGER", "Step number (as the input numbers it)."),
        C("name", "VARCHAR", "Name of the range that defines the step."),
        C("start_ns", "BIGINT", "Step start.", "ns"),
        C("end_ns", "BIGINT", "Step end.", "ns"),
        C("source", "VARCHAR", "How the step was found: `profiler_step`, `annotation`, `nvtx`, `graph_replay`, `kernel_pattern`."),
        C("event_id", "BIGINT", "The annotation event that defines the step, where there is one."),
    ), grain="step"),
    Table("ingest_issues", "What a parser read and could not use, counted by reason: nothing is dropped silently.", (
        C("trace_id", "INTEGER", "The trace."),
        C("reason", "VARCHAR", "Why the records were not stored as events (e.g. `negative duration`, `unknown ph`)."),
        C("count", "BIGINT", "How many records; 0 notes something the input lacks (a table, a column) without anything dropped."),
        C("example", "VARCHAR", "One such record, abbreviated."),
        C("unusable", "BOOLEAN", "True where the records could not be used as the input gives them "
          "(malformed, inconsistent or out-of-range values; kinds this profkit does not know): every "
          "figure leaves them out, and `profkit analyze` says so. False where they were read and left "
          "out by design (metadata, tables profkit does not use), and for notes (count 0).", default="false"),
    ), grain="reason"),
    Table("inputs_not_read", "Files under an input directory that no parser claimed, and inputs that "
          "repeat a recording already read, so that nothing of them is in the store (a rank's trace in a "
          "format profkit does not read would otherwise be left out without a word, a copy counted twice); "
          "reports name them. Files profkit writes or ignores by name (`*.duckdb`, `*.md`, `*.py`, hidden "
          "files) are not listed.", (
        C("path", "VARCHAR", "Absolute path of the file (a trace's path where one file holds several)."),
        C("reason", "VARCHAR", "Why it was not read: `not a trace profkit reads`, `empty file`, `the same "
          "run as NAME, which is read` (an Nsight report beside its SQLite export), `the same recording as "
          "NAME (same events), read once` (a copy of a trace, or its .json beside its .json.gz: the same "
          "format, event count, first start and last end to the nanosecond, and a hash over every event's "
          "kind, name, times, process, thread, device and stream), or `a "
          "FORMAT trace inside a FORMAT directory, not read with it` (a rocpd database among rocprofv3 CSV "
          "files)."),
    ), grain="file"),
)

VIEWS: tuple[View, ...] = (
    View("device_events", "Every activity on a device: kernels, copies, fills (not device annotations).", """
        SELECT * FROM events WHERE kind IN ('kernel', 'memcpy', 'memset')
    """),
    View("kernels", "Kernels with their launch configuration.", """
        SELECT e.*, k.* EXCLUDE (event_id)
        FROM events e LEFT JOIN kernel_info k USING (event_id)
        WHERE e.kind = 'kernel'
    """),
    View("launches", "Each runtime call joined to the device activity it enqueued (by correlation).", """
        SELECT l.trace_id, r.event_id AS runtime_event, r.name AS runtime_name,
               r.start_ns AS launch_start_ns, r.end_ns AS launch_end_ns, r.tid,
               d.event_id AS device_event, d.kind AS device_kind, d.name AS device_name,
               d.start_ns AS device_start_ns, d.end_ns AS device_end_ns,
               d.device, d.stream, d.category,
               d.start_ns - r.start_ns AS launch_to_start_ns
        FROM links l
        JOIN events r ON r.event_id = l.src_event
        JOIN events d ON d.event_id = l.dst_event
        WHERE l.kind = 'launch'
    """),
    View("host_ops", "Framework operators on host threads.", """
        SELECT * FROM events WHERE kind = 'cpu_op'
    """),
    View("comms", "Communication kernels with their collective metadata.", """
        SELECT e.*, c.* EXCLUDE (event_id)
        FROM events e JOIN collectives c USING (event_id)
    """),
    View("copies_view", "Copies and fills with their achieved bandwidth.", """
        SELECT e.event_id, e.trace_id, e.kind, e.name, e.start_ns, e.dur_ns, e.device, e.stream,
               c.bytes, c.direction, c.src_memory, c.dst_memory,
               CASE WHEN e.dur_ns > 0 THEN c.bytes / (e.dur_ns / 1e9) END AS bytes_per_s
        FROM events e JOIN copies c USING (event_id)
    """),
)


def ddl(in_file: bool = False, database: str = "") -> list[str]:
    """The CREATE statements for every table and view, in dependency order, with each
    column's `file_compression` for a store file (`in_file`), else its
    `memory_compression`; in `database` if named."""
    prefix = f'"{database}".main.' if database else ""
    statements = []
    for table in TABLES:
        cols = ",\n  ".join(_column_ddl(c, in_file) for c in table.columns)
        statements.append(f"CREATE TABLE IF NOT EXISTS {prefix}{table.name} (\n  {cols}\n)")
    for view in VIEWS:
        statements.append(f"CREATE OR REPLACE VIEW {prefix}{view.name} AS {view.sql.strip()}")
    return statements


def _column_ddl(column: Column, in_file: bool) -> str:
    default = f" DEFAULT {column.default}" if column.default else ""
    compression = column.file_compression if in_file else column.memory_compression
    if compression:
        return f"{column.name} {column.type}{default} USING COMPRESSION {compression}"
    return f"{column.name} {column.type}{default}"


def table(name: str) -> Table:
    for t in TABLES:
        if t.name == name:
            return t
    raise KeyError(name)


def column_names(name: str) -> list[str]:
    return [c.name for c in table(name).columns]


def markdown() -> str:
    """The schema as Markdown: the text of docs/schema.md and of `profkit schema`."""
    out = [
        "# The profkit store",
        "",
        f"Schema version {SCHEMA_VERSION}. Generated from `profkit/schema.py` by "
        "`profkit schema --markdown`; do not edit by hand.",
        "",
        "Every input lands in one DuckDB database with these tables. Every time is an integer "
        "number of nanoseconds on the trace's own clock (add `traces.clock_offset_ns` to align "
        "ranks). Event ids are unique across the store, so joins need only `event_id`. One "
        "schema serves every vendor: an analysis written against it works on Kineto, Nsight "
        "Systems and rocprof inputs alike.",
        "",
        "Query it with `profkit sql TRACE \"SELECT ...\"`, or open the cached "
        "`TRACE.profkit.duckdb` in any DuckDB client.",
        "",
    ]
    for t in TABLES:
        out += [f"## `{t.name}`", "", t.doc + (f" *One row per {t.grain}.*" if t.grain else ""), "",
                "| column | type | unit | meaning |", "|---|---|---|---|"]
        out += [f"| `{c.name}` | {c.type} | {c.unit} | {c.doc} |" for c in t.columns]
        out.append("")
    out += ["# Views", "", "Views make the common joins one word.", ""]
    for v in VIEWS:
        sql = "\n".join(line.strip() for line in v.sql.strip().splitlines())
        out += [f"## `{v.name}`", "", v.doc, "", "```sql", sql, "```", ""]
    out += [DESIGN_NOTES]
    return "\n".join(out)


DESIGN_NOTES = """# Where this departs from the design sketch, and why

- `events` keeps `start_ns`, `dur_ns` and `end_ns`. Durations come from the input's own
  duration field, not from rounded end minus start: epoch-scale microsecond timestamps
  lose sub-microsecond precision as doubles, durations do not.
- Event ids are unique across the whole store (not per trace), so no join needs a
  trace id; parsers write local ids and the writer shifts them. In a store of many ranks,
  naming the trace on both sides of a join (`... JOIN events k ON k.event_id = x.event_id
  AND k.trace_id = 3`) keeps it to that trace's rows: on event ids alone DuckDB reads every
  rank's events (`kernel_info`, without a trace id, can be bounded by the trace's event ids).
- `kernel_info` (not `kernels_info`) and `copies` hold the per-kind detail; the views
  `kernels` and `copies_view` join them back to `events`.
- `threads` was added: process and thread names (and device lane names) from trace
  metadata, which reports need to say "thread 7 (dataloader)" rather than a number.
- `events.step` and `events.source_cat` were added: the step an event belongs to (device
  work takes its launch's step, so a kernel that runs late still counts for the step that
  issued it) and the input's own category, so nothing the vendor said is lost.
- `traces.source_records` counts what the parser read, so "stored + counted as issue =
  read" can be checked for every input.
- Launch links are derived once for every format, by (trace, process, correlation id):
  correlation ids repeat across processes in multi-process Nsight exports.
- Categories are assigned per distinct (kind, name) by `profkit/classify.py` from the
  pattern tables in `profkit/data/`; the first matching row wins.
"""
