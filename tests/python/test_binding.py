"""The Python binding on the CPU world (numpy only, no torch, no GPU).

Results are compared bit for bit with serial references written from
docs/algorithms.md on the host reference codecs (as tests/common/ref_algos.h
does in C++), not with the library's own allreduce.
"""
import ctypes
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest

try:
    import numpy as np
except ImportError:  # pragma: no cover - tools/deps.sh installs numpy
    sys.exit("tests/python needs numpy: pip install numpy (tools/deps.sh installs it)")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "python"))

import gradcomp  # noqa: E402
from gradcomp import _lib, _types, codecs, comm as comm_mod  # noqa: E402

M64 = (1 << 64) - 1
WEYL = 0x9E3779B97F4A7C15


def mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def derive_key(seed, step, rank, stream):
    """The RNG key of one encode: (seed, comm step, rank, stream), as kernels/common_math.cuh."""
    k = mix64(seed ^ 0x67726164636F6D70)
    k = mix64((k + step * WEYL) & M64)
    k = mix64((k + rank * 0xC2B2AE3D27D4EB4F) & M64)
    return mix64((k + stream * 0x165667B19E3779F9) & M64)


def split(count, parts, d):
    """Chunk bounds: whole buckets, ceil(units/parts) per rank."""
    units = (count + d - 1) // d
    per = (units + parts - 1) // parts
    return [min(count, j * per * d) for j in range(parts + 1)]


def enc(x, res, bits, d, key):
    return codecs.qsgd_encode(x, bits, d, seed=key, residual=res) if x.size else None


def dec(e, out, bits, d, accumulate):
    if out.size:
        codecs.qsgd_decode(e, out.size, bits, d, out=out, accumulate=accumulate)


def finish(total, dtype, divisor):
    out = total / np.float32(divisor) if divisor != 1 else total.copy()
    return out.astype(dtype)


def ref_allgather(xs, res, cfg, step, avg):
    """Every rank encodes its whole buffer (with error feedback), all decode-sum in rank order."""
    n, N = xs[0].size, len(xs)
    acc = np.zeros(n, np.float32)
    for i in range(N):
        e = enc(xs[i], res[i] if cfg.error_feedback else None, cfg.bits, cfg.bucket_size,
                derive_key(cfg.seed, step, i, 0))
        dec(e, acc, cfg.bits, cfg.bucket_size, i != 0)
    return finish(acc, xs[0].dtype, N if avg else 1)


def ref_twoshot(xs, res, ores, cfg, step, avg):
    """Chunk j of every rank to its owner j (own chunk in full precision), the owner sums in rank
    order and encodes once more (owner residual), everybody decodes the same bytes."""
    n, N, d, b = xs[0].size, len(xs), cfg.bucket_size, cfg.bits
    off = split(n, N, d)
    result = np.zeros(n, np.float32)
    e = [[None] * N for _ in range(N)]
    own = [None] * N
    for i in range(N):
        x = xs[i].astype(np.float32)
        for j in range(N):
            lo, hi = off[j], off[j + 1]
            r = res[i][lo:hi] if cfg.error_feedback else None
            if j != i:
                e[i][j] = enc(x[lo:hi], r, b, d, derive_key(cfg.seed, step, i, j))
            else:
                own[i] = x[lo:hi] + r if r is not None else x[lo:hi].copy()
                if r is not None:
                    r[:] = 0
    for j in range(N):
        lo, hi = off[j], off[j + 1]
        if lo == hi:
            continue
        acc = np.zeros(hi - lo, np.float32)
        for i in range(N):
            if i == j:
                acc = own[j].copy() if i == 0 else acc + own[j]
            else:
                dec(e[i][j], acc, b, d, i != 0)
        e2 = enc(acc, ores[j][lo:hi] if cfg.owner_residual else None, b, d,
                 derive_key(cfg.seed, step, j, 1 << 32))
        dec(e2, result[lo:hi], b, d, False)
    return finish(result, xs[0].dtype, N if avg else 1)


def ref_ring(xs, res, ores, cfg, step, avg):
    """Chunk j starts at rank j and travels the ring; each receiver decodes, adds its own
    chunk and re-encodes; the last one adds its residual and encodes the sum for everybody."""
    n, N, d, b = xs[0].size, len(xs), cfg.bucket_size, cfg.bits
    off = split(n, N, d)
    result = np.zeros(n, np.float32)
    for j in range(N):
        lo, hi = off[j], off[j + 1]
        x = xs[j].astype(np.float32)
        cur = enc(x[lo:hi], res[j][lo:hi] if cfg.error_feedback else None, b, d,
                  derive_key(cfg.seed, step, j, 0))
        for hop in range(1, N):
            r = (j + hop) % N
            y = np.zeros(hi - lo, np.float32)
            dec(cur, y, b, d, False)
            y = xs[r].astype(np.float32)[lo:hi] + y
            rr = res[r][lo:hi] if cfg.error_feedback else None
            if hop < N - 1:
                cur = enc(y, rr, b, d, derive_key(cfg.seed, step, r, hop))
            else:
                if rr is not None:
                    y = y + rr
                    rr[:] = 0
                e2 = enc(y, ores[r][lo:hi] if cfg.owner_residual else None, b, d,
                         derive_key(cfg.seed, step, r, N))
                dec(e2, result[lo:hi], b, d, False)
    return finish(result, xs[0].dtype, N if avg else 1)


def inputs(N, n, dtype, seed):
    return [(np.random.RandomState(seed * 131 + i).standard_normal(n) * (1 + i)).astype(dtype)
            for i in range(N)]


def bits_of(a):
    return a.view(np.uint16 if a.dtype == np.float16 else np.uint32)


class StructMirror(unittest.TestCase):
    """The ctypes structs follow include/gradcomp.h field for field."""

    @staticmethod
    def header_fields(struct):
        with open(os.path.join(ROOT, "include", "gradcomp.h")) as f:
            text = f.read()
        text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
        body = re.search(r"typedef struct \{([^{}]*)\} " + struct + ";", text).group(1)
        decls = [s.strip() for s in body.split(";") if s.strip()]
        return [re.sub(r"\[.*\]", "", d).split()[-1] for d in decls]

    def test_config_fields_match_header(self):
        self.assertEqual([n for n, _ in _types.CONFIG_FIELDS], self.header_fields("gradcompConfig_t"),
                         "python/gradcomp/_types.py CONFIG_FIELDS is out of step with gradcomp.h")

    def test_stats_fields_match_header(self):
        self.assertEqual([n for n, _ in _types.STATS_FIELDS], self.header_fields("gradcompStats_t"),
                         "python/gradcomp/_types.py STATS_FIELDS is out of step with gradcomp.h")

    def test_init_writes_the_mirror_and_nothing_after(self):
        n = ctypes.sizeof(_types.ConfigStruct)
        for canary in (0xA5, 0x5A):
            buf = ctypes.create_string_buffer(bytes([canary]) * (n + 64), n + 64)
            self.assertEqual(gradcomp.lib().gradcompConfigInitSized(buf, n), 0)
            self.assertEqual(ctypes.c_size_t.from_buffer(buf).value, n)
            self.assertEqual(buf.raw[n:], bytes([canary]) * 64)

    @staticmethod
    def mirror(fields):
        return type("Mirror", (ctypes.Structure,), {"_fields_": fields})

    @staticmethod
    def refused(what, ctype, size, known):
        """The library's sentence for a struct larger than its own."""
        major, minor, patch = gradcomp.version()
        return (f"{what} structSize={size} is not the size of a {ctype} this library "
                f"({major}.{minor}.{patch}) knows ({known} bytes): the caller was built against "
                "a newer gradcomp.h than this library's")

    def test_a_mirror_ahead_of_the_library_is_refused_with_its_sentence(self):
        ahead = [("future", ctypes.c_int), ("future2", ctypes.c_uint64)]
        Ahead = self.mirror(_types.CONFIG_FIELDS + ahead)
        AheadStats = self.mirror(_types.STATS_FIELDS + ahead)
        size, stats_size = ctypes.sizeof(Ahead), ctypes.sizeof(AheadStats)
        saved = _types.ConfigStruct, _types.StatsStruct
        try:
            _types.ConfigStruct = Ahead
            with self.assertRaises(gradcomp.GradcompError) as e:
                _lib._check_config_size(gradcomp.lib())
            self.assertIn(self.refused("config", "gradcompConfig_t", size,
                                       "120, 128, 136, 144, 152, 160 or 168"), str(e.exception))
            self.assertIn("CONFIG_FIELDS", str(e.exception))
            with self.assertRaises(gradcomp.InvalidArgumentError) as e:
                gradcomp.Config(from_env=False)
            self.assertEqual(str(e.exception), self.refused(
                "config", "gradcompConfig_t", size, "120, 128, 136, 144, 152, 160 or 168"))
            _types.ConfigStruct = saved[0]
            _types.StatsStruct = AheadStats
            with gradcomp.CpuWorld(1) as w:
                with self.assertRaises(gradcomp.InvalidArgumentError) as e:
                    w.comms[0].stats()
            self.assertEqual(str(e.exception), self.refused(
                "stats", "gradcompStats_t", stats_size, "128, 136, 144, 152, 160 or 232"))
        finally:
            _types.ConfigStruct, _types.StatsStruct = saved
        _lib._check_config_size(gradcomp.lib())  # the real mirror passes

    def test_an_earlier_mirror_runs_as_the_whole_config_at_defaults(self):
        # The mirror of an earlier header (up to pipelineBytes, 136 bytes): the
        # library writes and reads its fields only, the others at defaults.
        names = [n for n, _ in _types.CONFIG_FIELDS]
        Earlier = self.mirror(_types.CONFIG_FIELDS[:names.index("pipelineBytes") + 1])
        EarlierStats = self.mirror(
            _types.STATS_FIELDS[:[n for n, _ in _types.STATS_FIELDS].index("piecesLast") + 1])
        self.assertEqual((ctypes.sizeof(Earlier), ctypes.sizeof(EarlierStats)), (136, 152))
        n, N = 3000, 3
        data = [np.random.default_rng(40 + r).standard_normal(n).astype(np.float32)
                for r in range(N)]

        def run(cfg):
            with gradcomp.CpuWorld(N, cfg) as w:
                bufs = [d.copy() for d in data]
                w.run(lambda c: c.allreduce(bufs[c.rank]))
                return bufs, w.comms[0].stats()

        whole = gradcomp.Config(from_env=False, min_elements=0, bits=3, algo="twoshot")
        expect, expect_stats = run(whole)
        saved = _types.ConfigStruct, _types.StatsStruct
        try:
            _types.ConfigStruct, _types.StatsStruct = Earlier, EarlierStats
            earlier = gradcomp.Config(from_env=False, min_elements=0, bits=3, algo="twoshot")
            self.assertEqual(earlier.struct.structSize, 136)
            got, got_stats = run(earlier)
        finally:
            _types.ConfigStruct, _types.StatsStruct = saved
        for r in range(N):
            np.testing.assert_array_equal(got[r].view(np.uint32), expect[r].view(np.uint32))
        self.assertEqual(got_stats["calls_compressed"], 1)
        self.assertEqual({k: got_stats[k] for k in got_stats},
                         {k: expect_stats[k] for k in got_stats})
        self.assertNotIn("peer_slots_rejected", got_stats)


class Version(unittest.TestCase):
    def test_every_place_states_the_library_version(self):
        def read(*path):
            with open(os.path.join(ROOT, *path)) as f:
                return f.read()

        header = read("include", "gradcomp.h")
        parts = tuple(int(re.search(r"#define GRADCOMP_VERSION_%s (\d+)" % p, header).group(1))
                      for p in ("MAJOR", "MINOR", "PATCH"))
        text = "%d.%d.%d" % parts
        self.assertEqual(gradcomp.version(), parts)
        self.assertEqual(re.search(r"project\(gradcomp VERSION ([\d.]+)",
                                   read("CMakeLists.txt")).group(1), text)
        self.assertEqual(re.search(r'^version = "([\d.]+)"', read("pyproject.toml"),
                                   re.M).group(1), text)
        # The shared library's file name follows the CMake project version.
        path = os.path.realpath(_lib.library_path())
        if os.path.basename(path).startswith("libgradcomp.so."):
            self.assertEqual(os.path.basename(path), "libgradcomp.so." + text)


class ConfigSettings(unittest.TestCase):
    def test_keywords_cover_every_field(self):
        # Every field but structSize and the unread padding reserved0 and reserved1.
        self.assertEqual(len(gradcomp.settings()), len(_types.CONFIG_FIELDS) - 3)
        self.assertNotIn("reserved0", gradcomp.settings())
        self.assertNotIn("reserved1", gradcomp.settings())
        self.assertIn("private_comm", gradcomp.settings())
        self.assertIn("levels", gradcomp.settings())
        c = gradcomp.Config(from_env=False, method="dgc", bits=3, bucket_size=256, density=0.001,
                            algo="sparse", value_type="half", min_elements=0)
        self.assertEqual((c.method, c.bits, c.bucket_size, c.algo, c.value_type, c.min_elements),
                         ("dgc", 3, 256, "sparse", "half", 0))
        self.assertEqual(c.struct.density, np.float32(0.001))
        c = gradcomp.Config(from_env=False, rounding="nearest")
        self.assertEqual((c.rounding, c.struct.rounding), ("nearest", 1))
        self.assertEqual(gradcomp.Config(from_env=False).rounding, "stochastic")
        with self.assertRaisesRegex(gradcomp.InvalidArgumentError,
                                    r"rounding=nearest \(GRADCOMP_ROUNDING\) with error_feedback=0"):
            gradcomp.Config(from_env=False, rounding="nearest", error_feedback=0)

    def test_defaults_then_environment(self):
        self.assertEqual(gradcomp.Config(from_env=False).bits, 4)
        old = os.environ.get("GRADCOMP_BITS")
        try:
            os.environ["GRADCOMP_BITS"] = "3"
            self.assertEqual(gradcomp.Config().bits, 3)
            self.assertEqual(gradcomp.Config(bits=5).bits, 5)  # keywords win
            os.environ["GRADCOMP_BITS"] = "9"
            with self.assertRaisesRegex(gradcomp.InvalidArgumentError, r"GRADCOMP_BITS=9"):
                gradcomp.Config()
        finally:
            if old is None:
                os.environ.pop("GRADCOMP_BITS", None)
            else:
                os.environ["GRADCOMP_BITS"] = old

    def test_bad_values_name_the_value_and_range(self):
        cases = [
            (dict(bits=9), r"bits=9 \(GRADCOMP_BITS\) is out of range 2\.\.8"),
            (dict(bits=1), r"bits=1 \(GRADCOMP_BITS\) is out of range 2\.\.8"),
            # The keyword the caller typed, not the C field (bucketSize, warmupSteps).
            (dict(bucket_size=100), r"bucket_size=100 \(GRADCOMP_BUCKET\) is not a multiple of 32"),
            (dict(warmup_steps=-1), r"warmup_steps=-1 \(GRADCOMP_WARMUP_STEPS\) is out of range"),
            (dict(density=0.0), r"density=0 \(GRADCOMP_DENSITY\) is out of range \[1e-06, 1\]"),
            (dict(momentum=1.0), r"momentum=1 \(GRADCOMP_MOMENTUM\) is out of range \[0, 0\.999999\]"),
            (dict(method="foo"), r"method='foo' is not one of none\|qsgd\|topk\|randk\|dgc"),
            (dict(bits="4"), r"bits='4' is not an integer"),
            (dict(density="x"), r"density='x' is not a number"),
            # A bool is an int to Python, not a number a setting takes (True is not density 1).
            (dict(density=True), r"density=True is not a number"),
            # Past the C field's type: the setting's range and variable, not the C type's.
            (dict(bits=2**40), r"bits=1099511627776 \(GRADCOMP_BITS\) is out of range 2\.\.8$"),
            (dict(min_elements=-1), r"min_elements=-1 \(GRADCOMP_MIN_ELEMENTS\) is out of range "
             r"0\.\.1000000000000000000$"),
            (dict(pipeline_bytes=2**64), r"pipeline_bytes=18446744073709551616 "
             r"\(GRADCOMP_PIPELINE_BYTES\) is out of range 0\.\.1000000000000000000$"),
            (dict(seed=-1), r"seed=-1 is out of range 0\.\.18446744073709551615$"),
            # NaN is out of every float setting's range, not a value a float flushes to 0.
            (dict(density=float("nan")),
             r"density=nan \(GRADCOMP_DENSITY\) is out of range \[1e-06, 1\]$"),
            # Flushed toward 0 by the float field: refused naming the value given, as
            # GRADCOMP_CLIP_NORM=1e-50 is, not stored as 0 (clip_norm 0 is "off").
            (dict(clip_norm=1e-50), r"clip_norm=1e-50 is not a number that a float holds"),
            (dict(momentum=1e-40), r"momentum=1e-40 is not a number that a float holds"),
            (dict(density=1e-50), r"density=1e-50 is not a number that a float holds"),
            # Past FLT_MAX: it arrived as inf, and the sentence named inf, not the value given.
            (dict(cpu_timeout_sec=3.5e38), r"^cpu_timeout_sec=3\.5e\+38 is too large in magnitude "
             r"for a float \(at most 3\.40282e\+38\)$"),
            (dict(clip_norm=-1e39), r"^clip_norm=-1e\+39 is too large in magnitude for a float"),
            (dict(bogus=1), r"unknown setting bogus; the settings are method, algo, bits"),
        ]
        for kwargs, pattern in cases:
            with self.subTest(**{k: repr(v) for k, v in kwargs.items()}):
                with self.assertRaisesRegex(gradcomp.InvalidArgumentError, pattern) as cm:
                    gradcomp.Config(from_env=False, **kwargs)
                self.assertIsInstance(cm.exception, ValueError)
                self.assertEqual(cm.exception.result_name, "gradcompInvalidArgument")

    def test_a_bool_is_refused_for_a_number_and_taken_for_an_on_off_setting(self):
        """bits=True was taken as bits=1 (and method=True as qsgd, levels=True as square) while
        numpy.True_ was refused: a bool is a number to Python, not a bit width, seed or choice.
        Every integer setting but the on/off ones refuses both kinds, naming the value and the
        setting's range; the on/off ones (range 0..1) take both as 0 and 1."""
        cases = [
            (dict(bits=True),
             r"^bits=True is a bool, not an integer in 2\.\.8 \(GRADCOMP_BITS\)$"),
            (dict(bucket_size=np.False_), r"^bucket_size=np\.False_ is a bool, not an integer in "
             r"32\.\.8192 \(GRADCOMP_BUCKET\)$"),
            (dict(seed=True),
             r"^seed=True is a bool, not an integer in 0\.\.18446744073709551615$"),
            (dict(min_elements=False), r"^min_elements=False is a bool, not an integer in "
             r"0\.\.1000000000000000000 \(GRADCOMP_MIN_ELEMENTS\)$"),
            (dict(local_size=True), r"^local_size=True is a bool, not an integer in 1\.\.65536 or "
             r"auto=0 \(GRADCOMP_LOCAL_SIZE\)$"),
            (dict(levels=True), r"^levels=True is a bool, not one of uniform\|square or its "
             r"number \(GRADCOMP_LEVELS\)$"),
            (dict(method=np.True_), r"^method=np\.True_ is a bool, not one of "
             r"none\|qsgd\|topk\|randk\|dgc or its number \(GRADCOMP_METHOD\)$"),
        ]
        for kwargs, pattern in cases:
            with self.subTest(**{k: repr(v) for k, v in kwargs.items()}):
                with self.assertRaisesRegex(gradcomp.InvalidArgumentError, pattern):
                    gradcomp.Config(from_env=False, **kwargs)
        flags = {_types.snake(n) for n in _types.FLAG_FIELDS}
        ints = [k for k in gradcomp.settings()
                if _types.snake(k) not in flags and not isinstance(
                    getattr(gradcomp.Config(from_env=False), k), float)]
        self.assertIn("warmup_steps", ints)
        self.assertIn("budget_window", ints)
        for key in ints:
            for v in (True, False, np.True_, np.False_):
                with self.subTest(key=key, value=repr(v)):
                    with self.assertRaisesRegex(gradcomp.InvalidArgumentError,
                                                f"^{key}={re.escape(repr(v))} is a bool, not "):
                        gradcomp.Config(from_env=False, **{key: v})
        for key in sorted(flags):
            for v, want in ((True, 1), (False, 0), (np.True_, 1), (np.False_, 0)):
                with self.subTest(key=key, value=repr(v)):
                    self.assertEqual(getattr(gradcomp.Config(from_env=False, **{key: v}), key),
                                     want)

    def test_the_on_off_settings_are_the_libraries(self):
        """FLAG_FIELDS (the settings that take a bool) are the 0..1 integers of the library's
        table: a setting added there with another range takes no bool."""
        with open(os.path.join(ROOT, "plugin", "config.cc")) as f:
            table = f.read()
        flags = set(re.findall(r"ParamKind::Int, GC_FIELD\((\w+)\), 0, 1,", table))
        self.assertIn("errorFeedback", flags)
        self.assertEqual(_types.FLAG_FIELDS, flags)

    def test_an_unknown_setting_names_the_nearest(self):
        with self.assertRaisesRegex(gradcomp.InvalidArgumentError,
                                    r"^unknown setting bitz \(did you mean bits\?\); the "
                                    r"settings are method, algo, bits"):
            gradcomp.Config(from_env=False, bitz=3)
        # A C field's name gives its keyword; a name like none gives no guess.
        with self.assertRaisesRegex(gradcomp.InvalidArgumentError,
                                    r"^unknown setting bucketSize \(did you mean bucket_size\?\), "
                                    r"zzzz; the settings are"):
            gradcomp.Config(from_env=False, bucketSize=256, zzzz=1)
        with self.assertRaisesRegex(gradcomp.InvalidArgumentError,
                                    r"unknown setting densty \(did you mean density\?\)"):
            gradcomp.Config(from_env=False).update(densty=0.1)

    def test_an_environment_spelling_names_its_setting(self):
        """A keyword spelt as the GRADCOMP_* variable of a setting (with or without the prefix,
        either case) names that setting, also where the variable's name is short for it
        (GRADCOMP_EF: ef names error_feedback); checked against the library's own table."""
        from gradcomp.config import _setting_named

        with open(os.path.join(ROOT, "plugin", "config.cc")) as f:
            table = re.findall(r'\{"(GRADCOMP_\w+)", ParamKind::\w+, GC_FIELD\((\w+)\)', f.read())
        self.assertEqual(len(table), len(gradcomp.settings()))
        for env, field in table:
            meant = _types.snake(field)
            for key in (env, env.lower(), env[len("GRADCOMP_"):], env[len("GRADCOMP_"):].lower()):
                with self.subTest(key=key):
                    self.assertEqual(_setting_named(key), meant)
        for kw, meant in (("GRADCOMP_METHOD", "method"), ("ef", "error_feedback"),
                          ("DENSITY", "density"), ("method_", "method")):
            with self.subTest(kw=kw):
                with self.assertRaisesRegex(gradcomp.InvalidArgumentError,
                                            rf"^unknown setting {kw} \(did you mean {meant}\?\);"):
                    gradcomp.Config(from_env=False, **{kw: 1})
        # A variable that is no setting names none.
        with self.assertRaisesRegex(gradcomp.InvalidArgumentError,
                                    r"^unknown setting GRADCOMP_DEBUG; the settings are"):
            gradcomp.Config(from_env=False, GRADCOMP_DEBUG="INFO")

    def test_failed_update_leaves_the_config_unchanged(self):
        c = gradcomp.Config(from_env=False, bits=3)
        with self.assertRaises(ValueError):
            c.update(bucket_size=64, bits=9)
        self.assertEqual((c.bits, c.bucket_size), (3, 512))

    def test_bad_world(self):
        with self.assertRaisesRegex(gradcomp.InvalidArgumentError, r"nranks=0 is out of range"):
            gradcomp.CpuWorld(0)
        # int() would truncate these, ctypes would wrap the last two (to 2, and to -2**31).
        for bad, why in ((2.5, "not an integer"), (True, "not an integer"),
                         (2**32 + 2, "not a C int"), (2**31, "not a C int")):
            with self.assertRaisesRegex(gradcomp.InvalidArgumentError, f"nranks=.*{why}"):
                gradcomp.CpuWorld(bad)

    def test_huge_world_is_refused_before_its_array_is_made(self):
        # nranks=2**31-1 is a C int, so only the library's range refuses it; the comms' output
        # array (8 bytes a rank) must not be made first. Under an address-space limit 1 GiB
        # above what the process uses, making that 16 GiB array fails with MemoryError.
        code = ("import resource, gradcomp\n"
                "gradcomp.Config()\n"
                "vm = int(open('/proc/self/status').read().split('VmSize:')[1].split()[0]) * 1024\n"
                "resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))\n"
                "try:\n"
                "    gradcomp.CpuWorld(2**31 - 1)\n"
                "except Exception as e:\n"
                "    print(type(e).__name__, e)\n")
        env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
        p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertRegex(p.stdout, r"^InvalidArgumentError gradcompCommCreateCpu: "
                                   r"nranks=2147483647 is out of range 1\.\.1024")

    def test_world_config_says_what_the_comms_run(self):
        # The library copied the settings when it made the comms: a change to the world's
        # config afterwards must not make it say settings the comms do not run.
        cfg = gradcomp.Config(from_env=False, method="qsgd", bits=2, min_elements=0)
        with gradcomp.CpuWorld(2, cfg) as w:
            cfg.update(bits=8)
            w.config.update(bits=8)
            self.assertEqual(w.config.bits, 2)
            w.run(lambda c: c.allreduce(np.ones(1024, np.float32)))
            self.assertEqual(w.comms[0].stats()["bits_last"], w.config.bits)


class OneCallAtATime(unittest.TestCase):
    def test_a_second_thread_on_one_comm_is_refused(self):
        """A comm takes one call at a time (gradcomp.h): while rank 0's allreduce waits for
        rank 1 on one thread (ctypes releases the GIL), every call on rank 0's comm from
        another thread raises GradcompError naming the comm and the call in progress,
        touching nothing; the waiting call then completes with the right sums."""
        n = 1 << 12
        cfg = gradcomp.Config(from_env=False, method="qsgd", min_elements=0, auto_tune=0,
                              cpu_timeout_sec=60)
        with gradcomp.CpuWorld(2, cfg) as w:
            c0, c1 = w.comms
            blob = c0.save_state()
            bufs = [np.ones(n, np.float32) for _ in range(2)]
            errors = []

            def first():
                try:
                    c0.allreduce(bufs[0])
                except gradcomp.GradcompError as e:
                    errors.append(e)

            t = threading.Thread(target=first)
            t.start()
            busy = r"comm .* \(rank 0 of 2\): another call on it is in progress on another thread"
            deadline = time.monotonic() + 30
            while True:  # until rank 0's allreduce holds the comm
                try:
                    c0.state_size()
                except gradcomp.GradcompError as e:
                    self.assertRegex(str(e), busy)
                    break
                self.assertLess(time.monotonic(), deadline,
                                "no call beside rank 0's allreduce was refused")
                time.sleep(0.001)
            other = np.full(n, 2.0, np.float32)
            for what, call in [("allreduce", lambda: c0.allreduce(other)),
                               ("keyed allreduce", lambda: c0.allreduce(other, key=3)),
                               ("save_state", c0.save_state),
                               ("load_state", lambda: c0.load_state(blob)),
                               ("reset_state", c0.reset_state)]:
                with self.subTest(what), self.assertRaisesRegex(gradcomp.GradcompError, busy):
                    call()
            np.testing.assert_array_equal(other, np.full(n, 2.0, np.float32))
            c1.allreduce(bufs[1])
            t.join()
            self.assertEqual(errors, [])
            np.testing.assert_array_equal(bufs[0], bufs[1])
            self.assertEqual(c0.stats()["steps"], 1)


class CpuAllReduce(unittest.TestCase):
    def run_case(self, algo, N, dtype, avg, n, steps=2):
        cfg = gradcomp.Config(from_env=False, algo=algo, min_elements=0, seed=77)
        res = [np.zeros(n, np.float32) for _ in range(N)]
        ores = [np.zeros(n, np.float32) for _ in range(N)]
        bufs = [np.zeros(n, dtype) for _ in range(N)]
        with gradcomp.CpuWorld(N, cfg) as w:
            for step in range(steps):
                xs = inputs(N, n, dtype, 1000 * step + n + N)
                for i in range(N):
                    bufs[i][:] = xs[i]
                w.run(lambda c: c.allreduce(bufs[c.rank], op="avg" if avg else "sum"))
                if algo == "allgather":
                    want = ref_allgather(xs, res, cfg, step, avg)
                elif algo == "ring":
                    want = ref_ring(xs, res, ores, cfg, step, avg)
                else:
                    want = ref_twoshot(xs, res, ores, cfg, step, avg)
                for r in range(N):
                    self.assertTrue(np.array_equal(bits_of(bufs[r]), bits_of(want)),
                                    f"{algo} N={N} {np.dtype(dtype).name} avg={avg} n={n} "
                                    f"step={step} rank={r}")
                st = w.comms[0].stats()
            self.assertEqual(st["calls_compressed"], steps)
            self.assertEqual(st["steps"], steps)
            self.assertEqual(st["bytes_in"], steps * n * np.dtype(dtype).itemsize)
            self.assertEqual(st["calls_per_algo"][algo], steps)
            self.assertEqual(st["calls_per_bits"],
                             {b: steps if b == st["bits_last"] else 0 for b in range(2, 9)})

    def test_allgather_twoshot_and_ring_match_the_references(self):
        for algo in ("allgather", "twoshot", "ring"):
            for N in (2, 3, 4):
                for dtype in (np.float32, np.float16):
                    for avg in (False, True):
                        for n in (1, 1000, 3001):
                            self.run_case(algo, N, dtype, avg, n)

    def test_exact_topk_matches_the_reference(self):
        """Sparse allgather: each rank sends its exact top-k of v = residual + g (float values,
        so v keeps exactly the rest: 0 where sent), everyone sums them in rank order from +0."""
        N, n, density = 3, 8000, 0.01
        for avg in (False, True):
            cfg = gradcomp.Config(from_env=False, method="topk", select="exact", density=density,
                                  min_elements=0)
            v = [np.zeros(n, np.float32) for _ in range(N)]
            bufs = [np.zeros(n, np.float32) for _ in range(N)]
            with gradcomp.CpuWorld(N, cfg) as w:
                for step in range(3):
                    xs = inputs(N, n, np.float32, 300 + step)
                    for i in range(N):
                        bufs[i][:] = xs[i]
                    w.run(lambda c: c.allreduce(bufs[c.rank], op="avg" if avg else "sum"))
                    want = np.zeros(n, np.float32)
                    for r in range(N):
                        v[r] += xs[r]
                        idx = codecs.topk_select(v[r], density, cfg.oversample, exact=True)
                        self.assertEqual(idx.size, 80)
                        want[idx] += v[r][idx]
                        v[r][idx] = 0
                    if avg:
                        want /= np.float32(N)
                    for r in range(N):
                        self.assertTrue(np.array_equal(bits_of(bufs[r]), bits_of(want)),
                                        f"avg={avg} step={step} rank={r}")
                self.assertEqual(w.comms[0].stats()["calls_per_algo"]["sparse"], 3)

    def test_bytes_on_wire_follow_the_table(self):
        """docs/algorithms.md: two-shot sends sum_{j!=r} E(n_j) + (N-1)*E(n_r)."""
        N, n = 4, 5000
        xs = inputs(N, n, np.float32, 5)
        with gradcomp.CpuWorld(N, algo="twoshot", min_elements=0) as w:
            w.run(lambda c: c.allreduce(xs[c.rank]))
            off = split(n, N, 512)
            E = [codecs.qsgd_encoded_bytes(off[j + 1] - off[j], 4, 512) for j in range(N)]
            for r, c in enumerate(w.comms):
                want = sum(E[j] for j in range(N) if j != r) + (N - 1) * E[r]
                self.assertEqual(c.stats()["bytes_on_wire"], want, f"rank {r}")

    def test_small_calls_pass_through(self):
        N, n = 3, 100
        xs = inputs(N, n, np.float32, 9)
        with gradcomp.CpuWorld(N, min_elements=n + 1) as w:
            outs = w.run(lambda c: c.allreduce(xs[c.rank].copy()))
            st = w.comms[1].stats()
        self.assertEqual((st["calls_compressed"], st["calls_passed_through"]), (0, 1))
        for r in range(N):
            self.assertTrue(np.array_equal(outs[r], outs[0]))
        exact = np.sum(np.array(xs, np.float64), axis=0)
        self.assertLessEqual(np.max(np.abs(outs[0] - exact)), 1e-5 * np.max(np.abs(exact)))

    def test_same_run_twice_gives_the_same_bits(self):
        N, n = 4, 4000
        got = []
        for _ in range(2):
            bufs = [x.copy() for x in inputs(N, n, np.float32, 3)]
            with gradcomp.CpuWorld(N, min_elements=0, method="topk", density=0.05) as w:
                for _ in range(3):
                    w.run(lambda c: c.allreduce(bufs[c.rank], key=7))
            for r in range(N):
                self.assertTrue(np.array_equal(bits_of(bufs[r]), bits_of(bufs[0])))
            got.append(bufs[0].copy())
        self.assertTrue(np.array_equal(bits_of(got[0]), bits_of(got[1])))

    def test_a_masked_array_is_refused(self):
        # Its data under the mask (a fill such as 1e20) was summed into the other ranks'
        # unmasked results, and the mask left as it was.
        masked = [np.ma.masked_array(np.array([1e20, 2, 3, 4], np.float32), mask=[1, 0, 0, 0]),
                  np.ma.masked_array(np.array([5, 6, 7, 8], np.float32), mask=[0, 0, 0, 0])]
        with gradcomp.CpuWorld(2, min_elements=0, method="none") as w:
            for call in (lambda c: c.allreduce(masked[c.rank]),
                         lambda c: c.allreduce(masked[c.rank].data, masked[c.rank]),
                         lambda c: c.reduce_scatter(np.ones(8, np.float32), masked[c.rank][:4])):
                with self.assertRaisesRegex(_lib.InvalidArgumentError,
                                            r"buf is a numpy masked array \(shape \(4,\), .*: "
                                            r"pass (send|recv)buf\.filled\(0\)"):
                    w.run(call)
            self.assertEqual(masked[1].data.tolist(), [5, 6, 7, 8])
            outs = w.run(lambda c: c.allreduce(masked[c.rank].filled(0)))
            self.assertEqual(outs[1].tolist(), [5, 8, 10, 12])
        with self.assertRaisesRegex(_lib.InvalidArgumentError, "x is a numpy masked array"):
            codecs.qsgd_encode(masked[0])

    def test_buffer_errors(self):
        with gradcomp.CpuWorld(1) as w:
            c = w.comms[0]
            with self.assertRaisesRegex(ValueError, "not C-contiguous"):
                c.allreduce(np.zeros((4, 4), np.float32)[:, 0])
            with self.assertRaisesRegex(ValueError, "differ"):
                c.allreduce(np.zeros(4, np.float32), np.zeros(5, np.float32))
            # The types by name, not by ncclDataType_t number ("type 7", "type 2").
            with self.assertRaisesRegex(ValueError, r"^send \(4 elements of float32\) and receive "
                                        r"\(4 elements of int32\) buffers differ: pass a recvbuf "
                                        r"of sendbuf's size and dtype$"):
                c.allreduce(np.zeros(4, np.float32), np.zeros(4, np.int32))
            with self.assertRaisesRegex(ValueError, r"size\*recvcount = 1\*4 elements of the "
                                        r"receive type \(float16\); got 4 elements of float32$"):
                c.reduce_scatter(np.zeros(4, np.float32), np.zeros(4, np.float16))
            with self.assertRaisesRegex(ValueError, "op='mean' is not one of"):
                c.allreduce(np.zeros(4, np.float32), op="mean")
            with self.assertRaisesRegex(ValueError, "complex128 has no NCCL type"):
                c.allreduce(np.zeros(4, np.complex128))
            # The raw calls take addresses and numbers: ctypes would wrap -1 into a size_t
            # of 2**64 - 1 and 2**32 + 7 into float32's 7 without these checks.
            x = np.zeros(4, np.float32)
            with self.assertRaisesRegex(ValueError, r"count=-1 is out of range"):
                c.allreduce_raw(x.ctypes.data, x.ctypes.data, -1, "float32")
            # One past a size_t, which ctypes would wrap to a count of 0 (a call that does
            # nothing and succeeds), and one past an address.
            with self.assertRaisesRegex(ValueError, r"count=18446744073709551616 is out of range"):
                c.allreduce_raw(x.ctypes.data, x.ctypes.data, 2**64, "float32")
            with self.assertRaisesRegex(ValueError, r"recvbuff=18446744073709551616 is not an "
                                        r"address \(0 \.\. 2\*\*64 - 1\)"):
                c.allreduce_raw(x.ctypes.data, 2**64, 4, "float32")
            with self.assertRaisesRegex(ValueError, r"count=4.0 is not an integer"):
                c.allreduce_raw(x.ctypes.data, x.ctypes.data, 4.0, "float32")
            with self.assertRaisesRegex(ValueError, r"datatype=4294967303 is not a C int"):
                c.allreduce_raw(x.ctypes.data, x.ctypes.data, 4, 2**32 + 7)
            # An array or tensor is not an address: its int() is its value (4096.0 read as
            # an address crashed the process).
            v = np.array([4096.0], np.float32)
            with self.assertRaisesRegex(ValueError, "sendbuff is a ndarray, not an address"):
                c.allreduce_raw(v, v, 4096, "float32")
            with self.assertRaisesRegex(ValueError, r"recvbuff=1.5 is not an address"):
                c.allreduce_raw(x.ctypes.data, 1.5, 4, "float32")
            with self.assertRaisesRegex(ValueError, r"op=2.5 is not one of"):
                c.allreduce(x, op=2.5)
            with self.assertRaisesRegex(ValueError, r"key=1.5 is not an unsigned 64-bit"):
                c.allreduce(x, key=1.5)


class SaveLoadState(unittest.TestCase):
    def test_round_trip_resumes_bit_for_bit(self):
        N, n = 3, 6000
        seqs = [inputs(N, n, np.float32, 40 + s) for s in range(4)]

        def train(world, bufs, steps):
            for s in steps:
                for i in range(N):
                    bufs[i][:] = seqs[s][i]
                world.run(lambda c: c.allreduce(bufs[c.rank], key=11, op="avg"))

        cfg = gradcomp.Config(from_env=False, min_elements=0)
        a_bufs = [np.zeros(n, np.float32) for _ in range(N)]
        with gradcomp.CpuWorld(N, cfg) as a:
            train(a, a_bufs, range(2))
            blobs = [c.save_state() for c in a.comms]
            self.assertTrue(all(len(b) == c.state_size() for b, c in zip(blobs, a.comms)))
            train(a, a_bufs, range(2, 4))
            a_stats = a.comms[0].stats()
        b_bufs = [np.zeros(n, np.float32) for _ in range(N)]  # other addresses: the key holds
        with gradcomp.CpuWorld(N, cfg) as b:
            for c, blob in zip(b.comms, blobs):
                c.load_state(blob)
            self.assertEqual(b.comms[0].stats()["steps"], 2)
            train(b, b_bufs, range(2, 4))
        for r in range(N):
            self.assertTrue(np.array_equal(bits_of(a_bufs[r]), bits_of(b_bufs[r])), f"rank {r}")
        self.assertEqual(a_stats["steps"], 4)

        # Without the state the run differs: the test can tell.
        c_bufs = [np.zeros(n, np.float32) for _ in range(N)]
        with gradcomp.CpuWorld(N, cfg) as c:
            train(c, c_bufs, range(2, 4))
        self.assertFalse(np.array_equal(bits_of(a_bufs[0]), bits_of(c_bufs[0])))

    def test_grad_scale_keeps_the_state_in_the_gradients_units(self):
        # Gradients scaled by 2^k that change between steps (a loss scaler): with
        # set_grad_scale before each call the outputs are bit for bit the scaled outputs of
        # the unscaled run; a saved state carries its scale.
        N, n = 3, 6000
        seqs = [inputs(N, n, np.float32, 70 + s) for s in range(4)]
        scales = [1024.0, 512.0, 512.0, 4096.0]
        cfg = gradcomp.Config(from_env=False, min_elements=0)

        def train(world, scaled, set_scale=True):
            out = []
            for s, scale in enumerate(scales):
                k = scale if scaled else 1.0
                bufs = [seqs[s][i] * np.float32(k) for i in range(N)]

                def body(c):
                    if scaled and set_scale:
                        c.set_grad_scale(k)
                    c.allreduce(bufs[c.rank], key=3, op="avg")
                world.run(body)
                out.append([b / np.float32(k) for b in bufs])
            return out

        with gradcomp.CpuWorld(N, cfg) as w:
            plain = train(w, False)
        with gradcomp.CpuWorld(N, cfg) as w:
            scaled = train(w, True)
            self.assertEqual(w.comms[0].grad_scale, 4096.0)
            blob = w.comms[0].save_state()
        for s in range(len(scales)):
            for r in range(N):
                self.assertTrue(np.array_equal(bits_of(plain[s][r]), bits_of(scaled[s][r])),
                                f"step {s} rank {r}")
        with gradcomp.CpuWorld(N, cfg) as w:
            unset = train(w, True, set_scale=False)
        self.assertFalse(np.array_equal(bits_of(plain[1][0]), bits_of(unset[1][0])))
        with gradcomp.CpuWorld(N, cfg) as w:
            self.assertEqual(w.comms[0].grad_scale, 1.0)
            w.comms[0].load_state(blob)
            self.assertEqual(w.comms[0].grad_scale, 4096.0)
            for bad in (0.0, -2.0, float("nan"), float("inf"), 2.0 ** 61):
                with self.assertRaisesRegex(gradcomp.InvalidArgumentError,
                                            r"scale=.* is outside 2\^-60\.\.2\^60"):
                    w.comms[0].set_grad_scale(bad)
            with self.assertRaisesRegex(ValueError, "scale='2' is not a number"):
                w.comms[0].set_grad_scale("2")
            self.assertEqual(w.comms[0].grad_scale, 4096.0)

    def test_forget_frees_one_buffers_state(self):
        # forget(key=...) and forget(recvbuf) free that buffer's state and no other; its next
        # call starts afresh: it gives what a buffer new at that call gives (the same world's
        # calls with a fresh key and a fresh array, in a second world that forgot nothing).
        N, n = 2, 6000
        seqs = [inputs(N, n, np.float32, 90 + s) for s in range(4)]
        cfg = gradcomp.Config(from_env=False, min_elements=0)

        def train(world, kbufs, ubufs, steps, key):
            for s in steps:
                for i in range(N):
                    kbufs[i][:] = seqs[s][i]
                    ubufs[i][:] = seqs[s][i]
                world.run(lambda c: (c.allreduce(kbufs[c.rank], key=key),
                                     c.allreduce(ubufs[c.rank])))

        outs = []
        for forget in (True, False):
            kb = [np.zeros(n, np.float32) for _ in range(N)]
            ub = [np.zeros(n, np.float32) for _ in range(N)]
            with gradcomp.CpuWorld(N, cfg) as w:
                train(w, kb, ub, range(2), key=5)
                size = w.comms[0].state_size()
                if forget:
                    w.run(lambda c: (c.forget(key=5), c.forget(ub[c.rank])))
                    self.assertLess(w.comms[0].state_size(), size)
                    train(w, kb, ub, range(2, 4), key=5)
                else:
                    ub = [np.zeros(n, np.float32) for _ in range(N)]
                    train(w, kb, ub, range(2, 4), key=6)
                outs.append([bits_of(b).copy() for b in kb + ub])
                with self.assertRaisesRegex(gradcomp.InvalidArgumentError,
                                            "forget takes exactly one of recvbuf"):
                    w.comms[0].forget()
                with self.assertRaisesRegex(gradcomp.InvalidArgumentError,
                                            "forget takes exactly one of recvbuf"):
                    w.comms[0].forget(ub[0], key=5)
                with self.assertRaisesRegex(gradcomp.InvalidArgumentError, "recvbuff is NULL"):
                    w.comms[0].forget(0)
        for a, b in zip(*outs):
            np.testing.assert_array_equal(a, b)

    def test_bad_state_is_refused(self):
        with gradcomp.CpuWorld(1) as w:
            with self.assertRaisesRegex(gradcomp.InvalidArgumentError,
                                        "state blob refused, the comm is unchanged"):
                w.comms[0].load_state(b"\0" * 64)
            # bytes(5) would be five zero bytes: a number is no blob.
            with self.assertRaisesRegex(ValueError, "blob is a int: pass the bytes"):
                w.comms[0].load_state(5)
            # A str has a length, but is text, not a blob.
            with self.assertRaisesRegex(ValueError, "blob is a str: pass the bytes"):
                w.comms[0].load_state("state")
            # A state dict (GradcompState's), or a sequence that is not bytes, is named, not
            # turned into bytes of its keys or a TypeError about one of them.
            with self.assertRaisesRegex(gradcomp.InvalidArgumentError,
                                        "blob is a dict: pass the bytes.*load_state_dict"):
                w.comms[0].load_state({"version": 1, "gradcomp": b""})
            with self.assertRaisesRegex(gradcomp.InvalidArgumentError,
                                        "blob is a list that bytes\\(\\) refuses"):
                w.comms[0].load_state([1.5, 2.5])
            w.comms[0].reset_state()
            self.assertEqual(w.comms[0].stats()["steps"], 0)

    def test_retune_on_the_cpu_world_changes_nothing(self):
        # The CPU backend never times: a retune succeeds and leaves the comm as it was.
        with gradcomp.CpuWorld(1) as w:
            before = w.comms[0].stats()
            w.comms[0].retune()
            self.assertEqual(w.comms[0].stats(), before)

    def test_streams_are_handles_or_carry_one(self):
        # What a caller passes as a stream: None, a handle, or an object with cuda_stream
        # (torch.cuda.Stream); anything else is refused by name before the library sees it.
        from gradcomp.comm import _stream

        class FakeTorchStream:
            cuda_stream = 0x7f00

        self.assertIsNone(_stream(None))
        self.assertEqual(_stream(0x10), 0x10)
        self.assertEqual(_stream(ctypes.c_void_p(0x20)), 0x20)
        self.assertEqual(_stream(FakeTorchStream()), 0x7f00)
        with gradcomp.CpuWorld(1) as w:
            null = FakeTorchStream()
            null.cuda_stream = 0
            w.comms[0].retune(null)
            x = np.arange(4, dtype=np.float32)
            w.comms[0].allreduce(x, stream=null)
            with self.assertRaisesRegex(gradcomp.InvalidArgumentError, "stream=.* is not a CUDA "):
                w.comms[0].retune("stream 0")
            with self.assertRaisesRegex(gradcomp.InvalidArgumentError, "stream=.* is not a CUDA "):
                w.comms[0].allreduce(x, stream=object())


class Codecs(unittest.TestCase):
    def test_qsgd_size_and_error_bound(self):
        x = np.random.RandomState(1).standard_normal(3001).astype(np.float32)
        for bits in (2, 4, 8):
            e = codecs.qsgd_encode(x, bits, 512, seed=3)
            nb = (3001 + 511) // 512
            self.assertEqual(e.size, 4 * nb + 4 * ((3001 * bits + 31) // 32))
            y = codecs.qsgd_decode(e, x.size, bits, 512)
            s = 2 ** (bits - 1) - 1
            for b in range(nb):
                seg = slice(512 * b, 512 * (b + 1))
                bound = np.max(np.abs(x[seg])) / s
                self.assertLessEqual(np.max(np.abs(y[seg] - x[seg])), bound * (1 + 1e-6))

    def test_qsgd_square_levels_and_nearest_rounding(self):
        # Square levels: the same size, every scale stored negative (the mark), each value
        # within the top step (2s-1)/s^2 of its bucket's max; nearest rounding draws
        # nothing (any seed, the same bytes) and errs by at most half that step.
        x = np.random.RandomState(4).standard_normal(3001).astype(np.float32)
        for bits in (3, 4, 8):
            s = 2 ** (bits - 1) - 1
            nb = (3001 + 511) // 512
            e = codecs.qsgd_encode(x, bits, 512, seed=3, levels="square")
            self.assertEqual(e.size, codecs.qsgd_encoded_bytes(x.size, bits, 512))
            self.assertTrue(np.all(e[:4 * nb].view(np.float32) < 0))
            y = codecs.qsgd_decode(e, x.size, bits, 512)
            near = codecs.qsgd_encode(x, bits, 512, seed=9, rounding="nearest", levels="square")
            self.assertTrue(np.array_equal(
                near, codecs.qsgd_encode(x, bits, 512, seed=1, rounding="nearest",
                                         levels="square")))
            yn = codecs.qsgd_decode(near, x.size, bits, 512)
            for b in range(nb):
                seg = slice(512 * b, 512 * (b + 1))
                top = np.max(np.abs(x[seg])) * (2 * s - 1) / s ** 2
                self.assertLessEqual(np.max(np.abs(y[seg] - x[seg])), top * (1 + 1e-6))
                self.assertLessEqual(np.max(np.abs(yn[seg] - x[seg])), top / 2 * (1 + 1e-6))
        with self.assertRaisesRegex(gradcomp.InvalidArgumentError,
                                    r"levels='cubic' is not one of uniform\|square"):
            codecs.qsgd_encode(x, levels="cubic")
        with self.assertRaisesRegex(gradcomp.InvalidArgumentError,
                                    r"rounding='up' is not one of stochastic\|nearest"):
            codecs.qsgd_encode(x, rounding="up")

    def test_topk_exact_picks_the_largest(self):
        v = np.random.RandomState(2).standard_normal(10000).astype(np.float32)
        idx = codecs.topk_select(v, density=0.01, exact=True)
        self.assertEqual(idx.size, 100)
        self.assertEqual(set(idx.tolist()), set(np.argsort(-np.abs(v))[:100].tolist()))


class CodecArgumentChecks(unittest.TestCase):
    """Every codec entry that writes into a caller's array checks its size, dtype, layout and
    writability first, and names the argument, what it got and what is allowed."""

    def setUp(self):
        self.x = np.random.RandomState(4).standard_normal(4096).astype(np.float32)
        self.p = codecs.elias_params(7)

    def test_elias_decode_with_other_levels_is_refused(self):
        # The encoding records its levels: more levels decoded every value scaled by 7/levels
        # (silently), fewer refused a level past them as a malformed encoding.
        e = codecs.elias_encode(self.x, self.p)
        for levels in (3, 8, 15):
            out = np.full(4096, 5.0, np.float32)
            with self.assertRaisesRegex(_lib.InvalidArgumentError,
                                        f"the Elias encoding was made with levels=7 but is "
                                        f"decoded with levels={levels}: decode with the params "
                                        "it was encoded with"):
                codecs.elias_decode(e, 4096, codecs.elias_params(levels), out=out)
            self.assertTrue(np.all(out == 5.0))
        ok = codecs.elias_decode(e, 4096, self.p)
        self.assertLessEqual(float(np.abs(ok - self.x).max()),
                             float(np.abs(self.x).max()) / 7 * (1 + 1e-6))

    def test_elias_decode_refuses_a_count_past_its_bytes_before_making_out(self):
        # out (count float32) was made before the library read the bytes: 2**40 elements was a
        # 4 TiB np.zeros (MemoryError naming nothing, or with overcommit, pages zeroed on use).
        from unittest import mock

        real = np.zeros

        def zeros(shape, *a, **k):
            n = int(np.prod(shape))
            if n > 1 << 24:
                raise AssertionError(f"elias_decode made an array of {n} elements first")
            return real(shape, *a, **k)

        e = codecs.elias_encode(self.x, self.p)
        with mock.patch.object(np, "zeros", zeros):
            with self.assertRaisesRegex(_lib.InvalidArgumentError,
                                        rf"^encoded has {e.size} bytes, fewer than the "
                                        rf"17179869188 of the header .* count=1099511627776 "
                                        "with bucket_size=512"):
                codecs.elias_decode(e, 2**40, self.p)
            with self.assertRaisesRegex(_lib.InvalidArgumentError,
                                        r"^count=144115188075855872 is too large for the codecs "
                                        r"\(at most 2\*\*56 elements\)"):
                codecs.elias_decode(e, 2**57, self.p)
            self.assertTrue(np.array_equal(codecs.elias_decode(e, 4096, self.p),
                                           codecs.elias_decode(bytes(e), 4096, self.p)))

    def test_elias_decode_checks_out(self):
        e = codecs.elias_encode(self.x, self.p)
        guard = np.full(8192, 7.0, np.float32)
        with self.assertRaisesRegex(ValueError, r"out must be a C-contiguous float32 array of "
                                    r"4096 elements; got shape \(16,\)"):
            codecs.elias_decode(e, 4096, self.p, out=guard[:16])
        self.assertTrue(np.all(guard == 7.0))  # nothing written past the small out
        with self.assertRaisesRegex(ValueError, r"out must be .*float64"):
            codecs.elias_decode(e, 4096, self.p, out=np.zeros(4096))
        with self.assertRaisesRegex(ValueError, "out is not C-contiguous"):
            codecs.elias_decode(e, 4096, self.p, out=np.zeros(8192, np.float32)[::2])
        ro = np.zeros(4096, np.float32)
        ro.flags.writeable = False
        with self.assertRaisesRegex(ValueError, r"out is read-only \(.*WRITEABLE=False"):
            codecs.elias_decode(e, 4096, self.p, out=ro)
        self.assertFalse(ro.any())
        with self.assertRaisesRegex(ValueError, "params=None is not an EliasParams"):
            codecs.elias_decode(e, 4096, None)
        ok = codecs.elias_decode(e, 4096, self.p, out=np.zeros(4096, np.float32))
        self.assertTrue(np.array_equal(ok, codecs.elias_decode(e, 4096, self.p)))

    def test_on_off_arguments_refuse_what_is_not_a_bool(self):
        # accumulate="False" is true to Python: read by its truth it would accumulate.
        e = codecs.qsgd_encode(self.x, rounding="nearest")
        out = np.ones(4096, np.float32)
        for bad in ("False", "no", 2, None, [0], 0.0):
            with self.assertRaisesRegex(gradcomp.InvalidArgumentError,
                                        rf"^accumulate={re.escape(repr(bad))} is not a bool"):
                codecs.qsgd_decode(e, 4096, out=out, accumulate=bad)
            with self.assertRaisesRegex(gradcomp.InvalidArgumentError,
                                        rf"^accumulate={re.escape(repr(bad))} is not a bool"):
                codecs.elias_decode(codecs.elias_encode(self.x, self.p), 4096, self.p, out=out,
                                    accumulate=bad)
            with self.assertRaisesRegex(gradcomp.InvalidArgumentError,
                                        rf"^exact={re.escape(repr(bad))} is not a bool"):
                codecs.topk_select(self.x, exact=bad)
            with self.assertRaisesRegex(gradcomp.InvalidArgumentError,
                                        rf"^exact={re.escape(repr(bad))} is not a bool"):
                codecs.topk_slots(4096, exact=bad)
        self.assertTrue(np.all(out == 1.0))  # nothing decoded into out
        for on, off in ((True, False), (np.True_, np.False_), (1, 0)):
            plain = codecs.qsgd_decode(e, 4096, accumulate=off)
            acc = codecs.qsgd_decode(e, 4096, out=np.ones(4096, np.float32), accumulate=on)
            self.assertTrue(np.array_equal(acc, plain + np.float32(1)))
            self.assertTrue(np.array_equal(codecs.topk_select(self.x, exact=on),
                                           codecs.topk_select(self.x, exact=True)))

    def test_name_arguments_refuse_other_types_by_name(self):
        # A list or dict: refused naming it, not with an unhashable-type TypeError naming nothing.
        for call, name in ((lambda v: codecs.qsgd_encode(self.x, rounding=v), "rounding"),
                           (lambda v: codecs.qsgd_encode(self.x, levels=v), "levels"),
                           (lambda v: codecs.elias_params(7, code=v), "code"),
                           (lambda v: codecs.elias_params(7, scale=v), "scale")):
            for bad in (["gamma"], {}, 1):
                with self.assertRaisesRegex(gradcomp.InvalidArgumentError,
                                            rf"^{name}={re.escape(repr(bad))} is not one of "):
                    call(bad)

    def test_strided_memoryview_is_read_as_its_bytes(self):
        # A memoryview with a step has no one run of bytes: its bytes in order, as bytes() gives.
        e = codecs.qsgd_encode(self.x, seed=3)
        wide = np.zeros(2 * e.size, np.uint8)
        wide[::2] = e
        view = memoryview(wide)[::2]
        self.assertFalse(view.c_contiguous)
        self.assertTrue(np.array_equal(codecs.qsgd_decode(view, 4096), codecs.qsgd_decode(e, 4096)))
        p = self.p
        f = codecs.elias_encode(self.x, p, seed=3)
        wide = np.zeros(2 * f.size, np.uint8)
        wide[::2] = f
        self.assertTrue(np.array_equal(codecs.elias_decode(memoryview(wide)[::2], 4096, p),
                                       codecs.elias_decode(f, 4096, p)))

    def test_elias_encode_checks_residual(self):
        guard = np.full(8192, 7.0, np.float32)
        with self.assertRaisesRegex(ValueError, r"residual must be a C-contiguous float32 array "
                                    r"of 4096 elements; got shape \(16,\)"):
            codecs.elias_encode(self.x, self.p, residual=guard[:16])
        self.assertTrue(np.all(guard == 7.0))
        with self.assertRaisesRegex(ValueError, r"residual must be .*float16"):
            codecs.elias_encode(self.x, self.p, residual=np.zeros(4096, np.float16))
        ro = np.zeros(4096, np.float32)
        ro.flags.writeable = False
        with self.assertRaisesRegex(ValueError, "residual is read-only"):
            codecs.elias_encode(self.x, self.p, residual=ro)
        self.assertFalse(ro.any())
        res = np.zeros(4096, np.float32)
        codecs.elias_encode(self.x, self.p, residual=res)
        self.assertTrue(res.any())  # error feedback left the quantization error there

    def test_qsgd_refuses_read_only_out_and_residual(self):
        e = codecs.qsgd_encode(self.x)
        immutable = bytes(4 * 4096)
        with self.assertRaisesRegex(ValueError, "out is read-only"):
            codecs.qsgd_decode(e, 4096, out=np.frombuffer(immutable, np.float32))
        self.assertEqual(immutable, bytes(4 * 4096))
        ro = np.zeros(4096, np.float32)
        ro.flags.writeable = False
        with self.assertRaisesRegex(ValueError, "residual is read-only"):
            codecs.qsgd_encode(self.x, residual=ro)
        self.assertFalse(ro.any())
        # A residual that is (or overlaps) x: the encode reads x while it writes the residual.
        y = self.x.copy()
        for x, r in ((y, y), (y[:2048], y[1024:3072])):
            with self.assertRaisesRegex(ValueError, "x and residual overlap"):
                codecs.qsgd_encode(x, residual=r)
            with self.assertRaisesRegex(ValueError, "x and residual overlap"):
                codecs.elias_encode(x, codecs.elias_params(16), residual=r)
        self.assertTrue((y == self.x).all())

    def test_decode_refuses_out_overlapping_the_encoded_bytes(self):
        # The decoders read the encoded bytes while they write out: an out that shares them
        # would decode bytes it has already overwritten (a wrong result, no error).
        p = codecs.elias_params(16)
        cases = ((codecs.qsgd_encode(self.x), lambda e, o: codecs.qsgd_decode(e, 4096, out=o)),
                 (codecs.elias_encode(self.x, p),
                  lambda e, o: codecs.elias_decode(e, 4096, p, out=o)))
        for enc, decode in cases:
            buf = np.zeros(4 * 4096 + 64, np.uint8)
            buf[:enc.size] = enc
            for at in (0, 16):
                out = buf[at:at + 4 * 4096].view(np.float32)
                with self.assertRaisesRegex(ValueError, "encoded and out overlap"):
                    decode(buf[:enc.size], out)
                self.assertTrue((buf[:enc.size] == enc).all())

    def test_other_byte_order_is_refused(self):
        swapped = self.x.astype(self.x.dtype.newbyteorder("S"))
        native = self.x.dtype.str
        self.assertFalse(swapped.dtype.isnative)
        with self.assertRaisesRegex(ValueError, re.escape(f".astype('{native}')")):
            gradcomp.buffer_info(swapped)
        with self.assertRaisesRegex(ValueError, "not in this machine's byte order"):
            codecs.qsgd_encode(swapped)
        with self.assertRaisesRegex(ValueError, "residual has dtype .* byte order"):
            codecs.qsgd_encode(self.x, residual=np.zeros(4096, swapped.dtype))
        with gradcomp.CpuWorld(1) as w:
            with self.assertRaisesRegex(ValueError, "sendbuf has dtype .* byte order"):
                w.comms[0].allreduce(swapped, np.zeros(4096, np.float32))

    def test_argument_errors_name_the_argument(self):
        with self.assertRaisesRegex(ValueError, r"count=-1 is out of range"):
            codecs.qsgd_encoded_bytes(-1)
        with self.assertRaisesRegex(ValueError, r"count=4611686018427387904 is too large"):
            codecs.qsgd_encoded_bytes(2**62)
        # The sentence names the one refused, with its range.
        with self.assertRaisesRegex(ValueError, r"^bits=9 is out of range 2\.\.8$"):
            codecs.qsgd_encoded_bytes(100, bits=9)
        with self.assertRaisesRegex(ValueError, r"^bucket_size=100 is out of range 32\.\.8192 or "
                                    r"not a multiple of 32$"):
            codecs.qsgd_encoded_bytes(100, bucket_size=100)
        with self.assertRaisesRegex(ValueError, r"count=-1 is out of range"):
            codecs.elias_decode(np.zeros(8, np.uint8), -1, self.p)
        with self.assertRaisesRegex(ValueError, "code='delta' is not one of gamma|omega"):
            codecs.elias_params(7, code="delta")
        with self.assertRaisesRegex(ValueError, "scale='l1' is not one of max|l2"):
            codecs.elias_params(7, scale="l1")
        e = codecs.qsgd_encode(self.x)
        ref = codecs.qsgd_decode(e, 4096)
        self.assertTrue(np.array_equal(codecs.qsgd_decode(bytes(e), 4096), ref))
        with self.assertRaisesRegex(ValueError, "encoded must be uint8 wire bytes; got .*int64"):
            codecs.qsgd_decode(e.astype(np.int64), 4096)
        pe = codecs.elias_encode(self.x, self.p)
        self.assertTrue(np.array_equal(codecs.elias_decode(bytes(pe), 4096, self.p),
                                       codecs.elias_decode(pe, 4096, self.p)))
        with self.assertRaisesRegex(ValueError, "encoded must be uint8 wire bytes; got .*float32"):
            codecs.elias_decode(pe.view(np.float32) if pe.size % 4 == 0 else
                                pe[:pe.size // 4 * 4].view(np.float32), 4096, self.p)

    def test_a_bool_is_not_a_codec_number(self):
        """A bool was refused as "is not an integer", without the range; the sentence now says
        it is a bool and gives the range, for numpy's bool too."""
        with self.assertRaisesRegex(ValueError, r"^bits=True is a bool, not an integer in range "
                                    r"2\.\.8$"):
            codecs.qsgd_encode(self.x, bits=True)
        with self.assertRaisesRegex(ValueError, r"^bucket_size=np\.False_ is a bool, not an "
                                    r"integer in range 32\.\.8192$"):
            codecs.qsgd_encoded_bytes(4096, bucket_size=np.False_)
        with self.assertRaisesRegex(ValueError, r"^levels=True is a bool, not an integer in range "
                                    r"1\.\.65535$"):
            codecs.elias_params(True)
        with self.assertRaisesRegex(ValueError, r"^seed=np\.True_ is a bool, not an integer in "
                                    r"0\.\.2\*\*64-1$"):
            codecs.topk_select(self.x, seed=np.True_)
        with self.assertRaisesRegex(ValueError, r"^count=True is a bool, not an integer element "
                                    r"count \(0 <= count < 2\*\*64\)$"):
            codecs.qsgd_decode(codecs.qsgd_encode(self.x), True)
        with self.assertRaisesRegex(ValueError, r"^nranks=True is a bool, not an integer$"):
            gradcomp.CpuWorld(True)

    def test_a_float_flushed_to_zero_is_named_as_given(self):
        """A nonzero value that a C float flushes toward 0 reached the library as 0 or a
        denormal, whose sentence named that (density=0 is out of range) instead of the value
        given; it is refused naming the value, as Config refuses it."""
        for call, pattern in (
                (lambda: codecs.topk_slots(1000, 1e-50), r"^density=1e-50 is not a number that a "
                 r"float holds: a nonzero value must be at least 1\.17549e-38$"),
                (lambda: codecs.topk_slots(1000, 0.5, 1e-45), r"^oversample=1e-45 is not"),
                (lambda: codecs.topk_select(self.x, sample_rate=-1e-300),
                 r"^sample_rate=-1e-300 is not"),
                (lambda: codecs.topk_select(self.x, density=5e-39), r"^density=5e-39 is not")):
            with self.assertRaisesRegex(gradcomp.InvalidArgumentError, pattern):
                call()
        with gradcomp.CpuWorld(1) as w:
            with self.assertRaisesRegex(gradcomp.InvalidArgumentError,
                                        r"^scale=1e-50 is not a number that a float holds"):
                w.comms[0].set_grad_scale(1e-50)
            self.assertEqual(w.comms[0].grad_scale, 1.0)

    def test_numbers_are_checked_before_ctypes_wraps_them(self):
        # ctypes keeps the low bits of an int too large for the C type: 2**32 + 4 would encode
        # at 4 bits, seed 2**64 + 5 as seed 5, n = 2**64 + 1000 as 1000.
        with self.assertRaisesRegex(ValueError, r"bits=4294967300 is not a C int in range 2\.\.8$"):
            codecs.qsgd_encode(self.x, bits=2**32 + 4)
        with self.assertRaisesRegex(ValueError,
                                    r"bucket_size=4294967808 is not a C int in range 32\.\.8192$"):
            codecs.qsgd_encoded_bytes(4096, bucket_size=2**32 + 512)
        with self.assertRaisesRegex(ValueError,
                                    r"bits=-4294967292 is not a C int in range 2\.\.8$"):
            codecs.qsgd_decode(codecs.qsgd_encode(self.x), 4096, bits=-2**32 + 4)
        with self.assertRaisesRegex(ValueError, r"levels=4294967303 is not a C int in range "
                                    r"1\.\.65535$"):
            codecs.elias_params(2**32 + 7)
        with self.assertRaisesRegex(ValueError, r"bits=4.9 is not an integer"):
            codecs.qsgd_encode(self.x, 4.9)
        with self.assertRaisesRegex(ValueError, r"seed=18446744073709551621 is out of range"):
            codecs.qsgd_encode(self.x, seed=2**64 + 5)
        with self.assertRaisesRegex(ValueError, r"seed=-1 is out of range"):
            codecs.elias_encode(self.x, self.p, seed=-1)
        with self.assertRaisesRegex(ValueError, r"seed=1.5 is not an integer"):
            codecs.topk_select(self.x, seed=1.5)
        with self.assertRaisesRegex(ValueError, r"levels=4294967303 is not a C int"):
            codecs.elias_params(2**32 + 7)
        with self.assertRaisesRegex(ValueError, r"n=18446744073709552616 is out of range"):
            codecs.topk_slots(2**64 + 1000, 0.5)
        with self.assertRaisesRegex(ValueError, r"n=-1 is out of range"):
            codecs.topk_slots(-1)
        with self.assertRaisesRegex(ValueError, r"density='0.1' is not a number"):
            codecs.topk_slots(1000, "0.1")
        with self.assertRaisesRegex(ValueError, r"oversample=10{400} is too large for a float"):
            codecs.topk_slots(1000, 0.5, 10**400)
        with self.assertRaisesRegex(ValueError, r"density=10{400} is too large for a float"):
            gradcomp.Config(density=10**400)
        with self.assertRaisesRegex(ValueError, r"^oversample=1e\+39 is too large in magnitude "
                                    r"for a float \(at most 3\.40282e\+38\)$"):
            codecs.topk_slots(1000, 0.5, 1e39)
        self.assertEqual(codecs.topk_slots(1000, 0.5, 1.0), codecs.topk_slots(np.uint64(1000),
                                                                               0.5, 1))
        self.assertTrue(np.array_equal(codecs.qsgd_encode(self.x, np.int64(4), seed=np.uint64(3)),
                                       codecs.qsgd_encode(self.x, 4, seed=3)))


class ReduceScatter(unittest.TestCase):
    def test_reduce_scatter_owns_one_block(self):
        if not gradcomp.Comm.has_reduce_scatter():
            self.skipTest("this libgradcomp has no gradcompReduceScatter (the reduce-scatter "
                          "entry point is not in this build)")
        N, per = 4, 3000
        xs = inputs(N, N * per, np.float32, 21)
        outs = [np.zeros(per, np.float32) for _ in range(N)]
        cfg = gradcomp.Config(from_env=False, min_elements=0, bits=4)
        with gradcomp.CpuWorld(N, cfg) as w:
            w.run(lambda c: c.reduce_scatter(xs[c.rank], outs[c.rank]))
            self.assertEqual(w.comms[0].stats()["calls_compressed"], 1)
        exact = np.sum(np.array(xs, np.float64), axis=0)
        for r in range(N):
            block = exact[r * per:(r + 1) * per]
            # One quantization of each of the N-1 remote contributions: at most
            # (N-1) * max|x| / s per element with s = 7.
            bound = (N - 1) * max(np.max(np.abs(x)) for x in xs) / 7
            self.assertLessEqual(np.max(np.abs(outs[r] - block)), bound)


def free_root():
    from gradcomp._ports import unused_port
    return f"127.0.0.1:{unused_port('127.0.0.1')}"


def socket_run(N, cfg, fn, timeout=120.0, root=None):
    """fn(comm) for ranks 0..N-1, each on its own thread with its own gradcompCommCreateSocket
    comm (ranks connected over 127.0.0.1, as separate processes would be); results by rank,
    the exception raised first re-raised."""
    from gradcomp._ports import reserve_port

    # The root's port held until rank 0 listens there: no concurrent test's choice takes it.
    with reserve_port("127.0.0.1") as held:
        root = root or f"127.0.0.1:{held.port}"

        def body(r):
            comm = gradcomp.Comm.socket(N, r, root, cfg)
            try:
                return fn(comm)
            finally:
                comm.close()

        return gradcomp.comm.run_on_threads(N, body, timeout)


@unittest.skipUnless(gradcomp.has("gradcompCommCreateSocket"),
                     "this libgradcomp has no gradcompCommCreateSocket")
class SocketComm(unittest.TestCase):
    """gradcompCommCreateSocket: N ranks over TCP give, bit for bit, what the in-process world
    gives for the same inputs and settings (results, saved state and stats), on every path:
    each algorithm, sparse, hierarchical, uncompressed and passed through."""

    CASES = [
        ("qsgd twoshot", dict(method="qsgd", algo="twoshot", bits=4)),
        ("qsgd ring 3-bit", dict(method="qsgd", algo="ring", bits=3)),
        ("qsgd allgather", dict(method="qsgd", algo="allgather", bits=2)),
        ("dgc", dict(method="dgc", density=0.01, warmup_steps=2)),
        ("topk exact", dict(method="topk", select="exact", density=0.02)),
        ("uncompressed", dict(method="none")),
        ("passed through", dict(method="qsgd", min_elements=10 ** 6)),
    ]

    def same(self, a, b, what):
        self.assertTrue(np.array_equal(bits_of(a), bits_of(b)), what)

    def compare(self, N, settings, n=3001, steps=3, dtype=np.float32, rs=False):
        # auto_tune=0: a TCP comm would time both paths and might pass calls through.
        cfg = gradcomp.Config(from_env=False,
                              **dict(dict(min_elements=0, seed=5, auto_tune=0), **settings))
        xs = [inputs(N, N * n if rs else n, dtype, 70 + s) for s in range(steps)]

        def body(comm):
            outs = []
            for s in range(steps):
                x = xs[s][comm.rank].copy()
                op = "avg" if s % 2 else "sum"
                if rs:
                    out = np.zeros(n, dtype)
                    comm.reduce_scatter(x, out, op=op, key=9)
                else:
                    out = comm.allreduce(x, op=op, key=9)
                outs.append(out)
            return outs, comm.save_state(), comm.stats()

        with gradcomp.CpuWorld(N, cfg) as w:
            want = w.run(body)
        got = socket_run(N, cfg, body)
        what = f"N={N} {settings} {np.dtype(dtype).name}{' reduce-scatter' if rs else ''}"
        for r in range(N):
            for s in range(steps):
                self.same(got[r][0][s], want[r][0][s], f"{what} rank {r} step {s}")
                if not rs:  # a reduce-scatter's ranks hold different blocks
                    self.same(got[r][0][s], got[0][0][s], f"{what} rank {r} step {s}: ranks")
            self.assertEqual(got[r][1], want[r][1], f"{what} rank {r}: saved state")
            if cfg.struct.localSize == 0:
                # Auto topology: ranks of one host are one node over TCP (as on NCCL); the
                # in-process world counts every rank as its own node.
                self.assertEqual(got[r][2].pop("bytes_inter_node"), 0, f"{what} rank {r}")
                want[r][2].pop("bytes_inter_node")
            self.assertEqual(got[r][2], want[r][2], f"{what} rank {r}: stats")
        return got

    def test_allreduce_is_the_in_process_worlds(self):
        for N in (2, 3, 4):
            for name, settings in self.CASES:
                with self.subTest(N=N, case=name):
                    got = self.compare(N, settings)
                    st = got[0][2]
                    if name in ("uncompressed", "passed through"):
                        self.assertEqual(st["calls_compressed"], 0)
                    else:
                        self.assertEqual(st["calls_compressed"], 3)
                        self.assertGreater(st["bytes_on_wire"], 0)

    def test_half_types_and_hierarchy(self):
        self.compare(3, dict(method="qsgd"), dtype=np.float16)
        got = self.compare(4, dict(method="qsgd", local_size=2))
        self.assertEqual(got[0][2]["calls_per_algo"]["hier"], 3)

    def test_layout(self):
        """Comm.layout: local_size's nodes; auto groups TCP ranks by host identity (these
        threads share one: one node), the in-process world's auto is flat."""
        for local, want_socket, want_world in ((0, (1, 4), (4, 1)), (2, (2, 2), (2, 2)),
                                               (1, (4, 1), (4, 1))):
            cfg = gradcomp.Config(from_env=False, local_size=local, auto_tune=0)
            got = socket_run(4, cfg, lambda comm: comm.layout())
            self.assertEqual(got, [want_socket] * 4, f"local_size={local}")
            with gradcomp.CpuWorld(4, cfg) as w:
                self.assertEqual([c.layout() for c in w.comms], [want_world] * 4,
                                 f"local_size={local}")

    def test_reduce_scatter_is_the_in_process_worlds(self):
        if not gradcomp.Comm.has_reduce_scatter():
            self.skipTest("this libgradcomp has no gradcompReduceScatter")
        for N in (2, 4):
            for name, settings in (self.CASES[0], self.CASES[5]):
                with self.subTest(N=N, case=name):
                    self.compare(N, settings, n=2000, rs=True)

    def test_bad_root_is_the_librarys_sentence(self):
        cfg = gradcomp.Config(from_env=False, cpu_timeout_sec=5)
        for root, says in (("127.0.0.1", 'not "host:port"'), ("127.0.0.1:99999", "99999"),
                           ("127.0.0.1:x1", '"x1"'), ("", "empty"),
                           ("no-such-host.invalid:1234", "no-such-host.invalid")):
            with self.subTest(root=root):
                with self.assertRaises(gradcomp.InvalidArgumentError) as cm:
                    gradcomp.Comm.socket(2, 1, root, cfg)
                msg = str(cm.exception)
                self.assertTrue(msg.startswith("gradcompCommCreateSocket: "), msg)
                self.assertIn(says, msg)
        with self.assertRaisesRegex(gradcomp.InvalidArgumentError, "not a \"host:port\" string"):
            gradcomp.Comm.socket(2, 0, 1234, cfg)
        # A NUL cut the C string short (the library named "127.0.0.1" alone); a lone surrogate
        # raised UnicodeEncodeError naming no argument.
        with self.assertRaisesRegex(gradcomp.InvalidArgumentError,
                                    r"^root='127.0.0.1\\x00:5' holds a NUL character"):
            gradcomp.Comm.socket(2, 1, "127.0.0.1\x00:5", cfg)
        with self.assertRaisesRegex(gradcomp.InvalidArgumentError,
                                    r"^root='\\udc80:5' is not text that UTF-8 encodes"):
            gradcomp.Comm.socket(2, 1, "\udc80:5", cfg)
        with self.assertRaisesRegex(gradcomp.InvalidArgumentError, r"rank=2"):
            gradcomp.Comm.socket(2, 2, free_root(), cfg)

    def test_a_missing_rank_times_out_with_a_sentence(self):
        cfg = gradcomp.Config(from_env=False, cpu_timeout_sec=1)
        t0 = time.time()
        with self.assertRaises(gradcomp.GradcompError) as cm:
            gradcomp.Comm.socket(2, 0, free_root(), cfg)  # rank 1 never comes
        self.assertLess(time.time() - t0, 30)
        self.assertRegex(str(cm.exception), r"timed out \(cpuTimeoutSec, GRADCOMP_CPU_TIMEOUT\)")

    def test_ranks_making_different_calls_fail_not_hang(self):
        cfg = gradcomp.Config(from_env=False, min_elements=0, cpu_timeout_sec=5)

        def body(comm):
            x = np.ones(1000 * (comm.rank + 1), np.float32)
            errors = []
            for _ in range(2):  # after the error every later call fails too
                try:
                    comm.allreduce(x)
                    errors.append(None)
                except gradcomp.GradcompError as e:
                    errors.append(str(e))
            return errors

        t0 = time.time()
        got = socket_run(2, cfg, body, timeout=60)
        self.assertLess(time.time() - t0, 30)
        for r in range(2):
            first, later = got[r]
            self.assertRegex(first, rf"rank {r} is at step 0 with count={1000 * (r + 1)} .* "
                             rf"while rank {1 - r} is at step 0 with count={2000 - 1000 * r}")
            self.assertRegex(later, r"closed after an earlier error .* destroy the comm")


class PortReservation(unittest.TestCase):
    """gradcomp._ports.reserve_port: a held port is refused to every other chooser (even one
    that draws the same number) and still taken by the listener that needs it."""

    def test_a_second_chooser_drawing_the_same_port_gets_another(self):
        import random
        from unittest import mock

        from gradcomp import _ports

        first = _ports.reserve_port("127.0.0.1")
        self.addCleanup(first.release)
        real = random.Random(12345)
        rngs = []

        class Rng:
            # reserve_port makes one per call: its first draw is the held port, later draws
            # are ordinary ones (a fixed next port could be taken by a test running beside).
            def __init__(self):
                self.drawn = []
                rngs.append(self)

            def randrange(self, lo, hi):
                self.drawn.append(first.port if not self.drawn else real.randrange(lo, hi))
                return self.drawn[-1]

        with mock.patch.object(random, "SystemRandom", Rng), \
                mock.patch.object(_ports.random, "SystemRandom", Rng):
            # unused_port (no hold) and reserve_port both pass over the held port.
            port = _ports.unused_port("127.0.0.1")
            second = _ports.reserve_port("127.0.0.1")
        second.release()
        self.assertEqual(len(rngs), 2)
        for rng, got in zip(rngs, (port, second.port)):
            self.assertEqual(rng.drawn[0], first.port)
            self.assertGreaterEqual(len(rng.drawn), 2)
            self.assertNotEqual(got, first.port)
            self.assertEqual(got, rng.drawn[-1])
        # The C++ tests' check (tests/common/loopback.h: a bind without SO_REUSEADDR) fails.
        self.assertFalse(_ports._bindable("127.0.0.1", first.port))
        self.assertFalse(_ports._bindable("", first.port))

    def test_the_listener_binds_a_held_port_and_a_released_one_is_free(self):
        import socket

        from gradcomp import _ports

        with _ports.reserve_port("127.0.0.1", span=3) as held:
            for q in range(held.port, held.port + 3):
                self.assertFalse(_ports._bindable("127.0.0.1", q))
            # As the torch store and gradcomp's root bind: SO_REUSEADDR, then listen.
            lst = socket.socket()
            lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lst.bind(("127.0.0.1", held.port + 1))
            lst.listen(1)
            c = socket.create_connection(("127.0.0.1", held.port + 1), timeout=10)
            a, _ = lst.accept()
            a.close(), c.close(), lst.close()
        # Released (the listener's own port may wait out TIME_WAIT after its connection).
        for q in (held.port, held.port + 2):
            self.assertTrue(_ports._bindable("127.0.0.1", q))


class LibraryErrors(unittest.TestCase):
    def test_missing_library_says_what_to_do(self):
        env = dict(os.environ, GRADCOMP_LIBRARY="/nonexistent/libgradcomp.so",
                   PYTHONPATH=os.path.join(ROOT, "python"))
        p = subprocess.run([sys.executable, "-c", "import gradcomp; gradcomp.Config()"], env=env,
                           capture_output=True, text=True)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("LibraryNotFoundError", p.stderr)
        self.assertIn("point it at a built libgradcomp.so", p.stderr)

    def test_empty_library_variable_is_refused_not_ignored(self):
        env = dict(os.environ, GRADCOMP_LIBRARY="", PYTHONPATH=os.path.join(ROOT, "python"))
        p = subprocess.run([sys.executable, "-c", "import gradcomp; gradcomp.Config()"], env=env,
                           capture_output=True, text=True)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("LibraryNotFoundError", p.stderr)
        self.assertIn("GRADCOMP_LIBRARY is set but empty", p.stderr)

    def test_the_preload_library_is_refused_naming_the_one_to_use(self):
        """GRADCOMP_LIBRARY naming libgradcomp_preload.so (the LD_PRELOAD door, which exports
        only the NCCL functions it interposes) says so, not a list of every missing function."""
        built = os.path.dirname(os.path.realpath(_lib.library_path()))
        preload = os.path.join(built, "plugin", "preload", "libgradcomp_preload.so")
        if not os.path.exists(preload):
            self.skipTest("no libgradcomp_preload.so in this build")
        env = dict(os.environ, GRADCOMP_LIBRARY=preload, PYTHONPATH=os.path.join(ROOT, "python"))
        p = subprocess.run([sys.executable, "-c", "import gradcomp; gradcomp.Config()"], env=env,
                           capture_output=True, text=True)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("has none of gradcomp's C API", p.stderr)
        self.assertIn("point GRADCOMP_LIBRARY at libgradcomp.so", p.stderr)
        self.assertNotIn("gradcompCommCreate", p.stderr)

    def test_info_runs(self):
        env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
        p = subprocess.run([sys.executable, "-m", "gradcomp.info"], env=env, capture_output=True,
                           text=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("libgradcomp", p.stdout)

    def test_info_refuses_arguments_and_says_what_it_prints(self):
        """gradcomp.info takes no arguments: --help says what it prints (exit 0), and an
        unknown option or a word is refused naming it (exit 2), not ignored."""
        env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
        run = lambda *args: subprocess.run(  # noqa: E731
            [sys.executable, "-m", "gradcomp.info", *args], env=env, capture_output=True,
            text=True)
        p = run("--help")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("usage: python -m gradcomp.info", p.stdout)
        self.assertIn("GRADCOMP_LIBRARY", p.stdout)
        self.assertNotIn("libgradcomp:", p.stdout)
        for args in (["--bogus"], ["extra"]):
            p = run(*args)
            self.assertEqual(p.returncode, 2, (args, p.stdout, p.stderr))
            self.assertIn("unrecognized arguments: %s" % args[0], p.stderr)
            self.assertEqual(p.stdout, "")

    def test_info_into_a_closed_pipe_is_no_traceback(self):
        """python -m gradcomp.info | head -1: the reader gone, gradcomp.info ends without a
        traceback (here the read end is closed before it starts, so every write fails)."""
        env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
        r, w = os.pipe()
        os.close(r)
        try:
            p = subprocess.run([sys.executable, "-m", "gradcomp.info"], env=env, stdout=w,
                               stderr=subprocess.PIPE, text=True)
        finally:
            os.close(w)
        self.assertNotIn("Traceback", p.stderr)
        self.assertNotIn("BrokenPipeError", p.stderr)
        self.assertEqual(p.returncode, 1, p.stderr)

    @staticmethod
    def run_info(**kv):
        """python -m gradcomp.info with the GRADCOMP_* variables kv alone set (and
        GRADCOMP_LIBRARY, as the tests run)."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("GRADCOMP_") or k == "GRADCOMP_LIBRARY"}
        env["PYTHONPATH"] = os.path.join(ROOT, "python")
        return subprocess.run([sys.executable, "-m", "gradcomp.info"], env=dict(env, **kv),
                              capture_output=True, text=True)

    def test_info_names_the_settings_and_a_refused_one(self):
        """gradcomp.info says which GRADCOMP_* values this process would run with, and a value
        the library refuses (every comm made from the environment would fail) with its
        sentence and exit 1."""
        run = self.run_info
        p = run()
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("settings: the defaults (no GRADCOMP_* set)", p.stdout)
        p = run(GRADCOMP_BITS="3", GRADCOMP_METHOD="qsgd")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("settings: GRADCOMP_BITS=3, GRADCOMP_METHOD=qsgd: accepted", p.stdout)
        p = run(GRADCOMP_BITS="9")
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn("settings: GRADCOMP_BITS=9: refused: GRADCOMP_BITS=9 is not an integer in "
                      "2..8, in plain decimal digits (no sign, space or leading zero)\n", p.stdout)
        # A number in another form is refused saying the form the library reads (the library's
        # sentence, as gradcompConfigFromEnv gives it).
        p = run(GRADCOMP_BITS="0x8", GRADCOMP_DENSITY="+0.5")
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn("GRADCOMP_BITS=0x8 is not an integer in 2..8, in plain decimal digits (no "
                      "sign, space or leading zero)", p.stdout)

    @unittest.skipUnless(gradcomp.has("gradcompEnvName"), "this libgradcomp has no gradcompEnvName")
    @unittest.skipIf("libasan" in os.environ.get("LD_PRELOAD", ""), "the preload after ASan's")
    def test_info_expands_origin_as_the_preloads_dlopen_does(self):
        """GRADCOMP_NCCL_LIBRARY=$ORIGIN/... is opened by the preload's dlopen, which reads
        $ORIGIN as the folder the preload was loaded from: with the preload loaded, info checks
        that file and names it; the path was said not to exist whatever that folder held."""
        built = os.path.dirname(os.path.realpath(_lib.library_path()))
        preload = os.path.join(built, "plugin", "preload", "libgradcomp_preload.so")
        if not os.path.exists(preload):
            self.skipTest("no libgradcomp_preload.so in this build")
        with tempfile.TemporaryDirectory() as d:
            os.mkdir(os.path.join(d, "lib"))
            here = os.path.join(d, "lib", "libgradcomp_preload.so")
            shutil.copy(preload, here)
            open(os.path.join(d, "libnccl.so.2"), "w").close()
            # $ORIGIN ends at any character that cannot continue a name: "$ORIGIN-x" is the
            # preload's folder followed by "-x" (glibc's is_dst), not a missing path.
            os.mkdir(os.path.join(d, "lib-x"))
            open(os.path.join(d, "lib-x", "libnccl.so.2"), "w").close()
            env = {k: v for k, v in os.environ.items()
                   if not k.startswith("GRADCOMP_") or k == "GRADCOMP_LIBRARY"}
            env.update(PYTHONPATH=os.path.join(ROOT, "python"),
                       LD_PRELOAD=" ".join(filter(None, [here, os.environ.get("LD_PRELOAD")])))

            def run(value):
                return subprocess.run([sys.executable, "-m", "gradcomp.info"],
                                      env=dict(env, GRADCOMP_NCCL_LIBRARY=value),
                                      capture_output=True, text=True)
            for value in ("$ORIGIN/../libnccl.so.2", "${ORIGIN}/../libnccl.so.2",
                          "$ORIGIN-x/libnccl.so.2"):
                p = run(value)
                self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
                self.assertIn("settings: GRADCOMP_NCCL_LIBRARY=%s: accepted\n" % value, p.stdout)
                self.assertNotIn("not checked", p.stdout)
            value = "${ORIGIN}/no-such-dir/libnccl.so.2"
            p = run(value)
            self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
            self.assertIn("GRADCOMP_NCCL_LIBRARY=%s does not exist ($ORIGIN is %s, the folder the "
                          "preload was loaded from: %s): the preload warns that it cannot open "
                          "it" % (value, os.path.join(d, "lib"),
                                  os.path.join(d, "lib", "no-such-dir", "libnccl.so.2")),
                          p.stdout)

    @unittest.skipUnless(gradcomp.has("gradcompEnvName"), "this libgradcomp has no gradcompEnvName")
    def test_info_tells_settings_from_other_variables(self):
        """A GRADCOMP_* variable the library does not read (a build's, a test's, a misspelt
        setting) is not listed as an accepted setting: gradcomp.info says it is not read."""
        run = self.run_info
        p = run(GRADCOMP_CUDA_ARCHS="90", GRADCOMP_BITS="3", GRADCOMP_TEST_GPU="1",
                GRADCOMP_DEBUG="WARN")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("settings: GRADCOMP_BITS=3, GRADCOMP_DEBUG=WARN: accepted\n", p.stdout)
        self.assertIn("not read by the library: GRADCOMP_CUDA_ARCHS=90, GRADCOMP_TEST_GPU=1 ",
                      p.stdout)
        p = run(GRADCOMP_CUDA_ARCHS="90")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("settings: the defaults (none of the library's GRADCOMP_* settings set)",
                      p.stdout)
        self.assertIn("not read by the library: GRADCOMP_CUDA_ARCHS=90 ", p.stdout)
        # The names come from the library's own table (docs/env.md lists the same).
        names = gradcomp.config.env_names()
        with open(os.path.join(ROOT, "docs", "env.md")) as f:
            documented = re.findall(r"^\| `(GRADCOMP_[A-Z0-9_]+)` \|", f.read(), re.M)
        self.assertEqual(names, documented)
        self.assertNotIn("GRADCOMP_CUDA_ARCHS", names)

    @unittest.skipUnless(gradcomp.has("gradcompEnvName"), "this libgradcomp has no gradcompEnvName")
    def test_info_says_which_process_settings_fall_back_to_their_defaults(self):
        """GRADCOMP_DEBUG, GRADCOMP_GROUP and GRADCOMP_NCCL_LIBRARY are not part of a Config:
        a value the library or the preload does not take (warned of where it is read, the
        default used) was listed as accepted. Their accepted spellings still are."""
        run = self.run_info
        p = run(GRADCOMP_GROUP="fused", GRADCOMP_DEBUG="verbose")
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn("settings: GRADCOMP_DEBUG=verbose, GRADCOMP_GROUP=fused: not taken as "
                      "given; GRADCOMP_DEBUG=verbose is not one of NONE|OFF|WARN|INFO|TRACE: the "
                      "library warns and logs at WARN; GRADCOMP_GROUP=fused is not defer, fuse or "
                      "pass: the preload warns and uses defer\n", p.stdout)
        p = run(GRADCOMP_GROUP="", GRADCOMP_NCCL_LIBRARY="")
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn("GRADCOMP_GROUP is set but empty: the preload warns and uses defer; "
                      "GRADCOMP_NCCL_LIBRARY is set but empty: the preload warns and uses "
                      "libnccl.so.2\n", p.stdout)
        # A path that is not there: the preload cannot open it (it warns and looks for pnccl*
        # symbols in the process); a name without '/' is the loader's to search, and taken.
        missing = os.path.join(ROOT, "no-such-dir", "libnccl.so.2")
        p = run(GRADCOMP_NCCL_LIBRARY=missing)
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn("settings: GRADCOMP_NCCL_LIBRARY=%s: not taken as given; "
                      "GRADCOMP_NCCL_LIBRARY=%s does not exist: the preload warns that it cannot "
                      "open it and looks for pnccl* symbols in the process\n" % (missing, missing),
                      p.stdout)
        p = run(GRADCOMP_NCCL_LIBRARY="libnccl.so.2")
        self.assertEqual(p.returncode, 0, p.stdout)
        self.assertIn("settings: GRADCOMP_NCCL_LIBRARY=libnccl.so.2: accepted\n", p.stdout)
        # $ORIGIN (or ${ORIGIN}) is expanded by dlopen, in the preload's resolve(), to the
        # folder the preload was loaded from: not a missing file. Without the preload in this
        # process that folder is not known, which is said (exit 0).
        origin = "$ORIGIN/no-such-dir/libnccl.so.2"
        p = run(GRADCOMP_NCCL_LIBRARY=origin)
        self.assertEqual(p.returncode, 0, p.stdout)
        self.assertIn("settings: GRADCOMP_NCCL_LIBRARY=%s: accepted\nGRADCOMP_NCCL_LIBRARY=%s is "
                      "not checked: $ORIGIN is the folder of the preload library that opens it "
                      "(dlopen in libgradcomp_preload.so), which this process has not loaded "
                      % (origin, origin), p.stdout)
        self.assertNotIn("does not exist", p.stdout)
        p = run(GRADCOMP_GROUP="pass ", GRADCOMP_BITS="9")  # both said, the blank shown
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn(": refused: GRADCOMP_BITS=9 is not an integer in 2..8, in plain decimal "
                      "digits (no sign, space or leading zero); "
                      "GRADCOMP_GROUP=\"pass \" is not defer, fuse or pass", p.stdout)
        p = run(GRADCOMP_GROUP="Fuse", GRADCOMP_DEBUG="info")  # case-insensitive, as read
        self.assertEqual(p.returncode, 0, p.stdout)
        self.assertIn("settings: GRADCOMP_DEBUG=info, GRADCOMP_GROUP=Fuse: accepted\n", p.stdout)
        p = run(GRADCOMP_DEBUG="")  # empty is off, as an empty NCCL_DEBUG is
        self.assertEqual(p.returncode, 0, p.stdout)

    def test_run_on_threads_waits_one_timeout_for_all_ranks(self):
        release = threading.Event()
        t0 = time.monotonic()
        with self.assertRaisesRegex(TimeoutError, r"ranks \[0, 1, 2, 3\] did not finish"):
            comm_mod.run_on_threads(4, lambda r: release.wait(30), timeout=0.5)
        elapsed = time.monotonic() - t0
        release.set()
        self.assertLess(elapsed, 1.5)  # one timeout in all, not 4 x 0.5 s

    def test_run_timeout_none_is_no_limit_and_a_bad_one_is_refused_before_the_ranks_run(self):
        """run(fn, timeout=None) waits without a limit (as Thread.join); a negative, NaN or
        non-number timeout is refused naming it before any rank runs (a negative one would
        return the ranks' results or a TimeoutError by chance)."""
        calls = []
        with gradcomp.CpuWorld(2, gradcomp.Config(from_env=False)) as world:
            self.assertEqual(world.run(lambda c: c.rank, timeout=None), [0, 1])
            self.assertEqual(world.run(lambda c: c.rank, timeout=float("inf")), [0, 1])
            for bad in (-1, float("nan"), "5", True):
                with self.assertRaisesRegex(ValueError, rf"^timeout={re.escape(repr(bad))} is not "
                                            r"a number of seconds >= 0 \(or None: no limit\)$"):
                    world.run(calls.append, timeout=bad)
        self.assertEqual(calls, [])

    def test_run_raises_the_exception_raised_first_not_rank_0s(self):
        """A rank function that raises on rank 1 while rank 0 waits in a collective: rank 0
        fails too (the world stopped), with an error that names no cause; run() raises rank
        1's exception, the one raised first."""
        cfg = gradcomp.Config(from_env=False, min_elements=0, auto_tune=0, cpu_timeout_sec=2)

        def body(c):
            if c.rank == 1:
                raise ValueError("rank 1's own error")
            return c.allreduce(np.ones(64, np.float32))

        with gradcomp.CpuWorld(2, cfg) as world:
            with self.assertRaisesRegex(ValueError, "rank 1's own error"):
                world.run(body, timeout=60)

    def test_run_stops_the_world_when_a_rank_raises(self):
        """Rank 1's function raises while rank 0 waits for it in an allreduce, and again while
        rank 0 has yet to enter one: rank 0 fails once run's grace (STOP_GRACE_S) is over, well
        before cpu_timeout_sec, and run() raises rank 1's exception. The world is closed
        afterwards (its comms were stopped, so no collective of it could succeed): its comms
        say so, and a later run() raises at once naming why (until 2026-12-07 rank 0 waited
        out cpu_timeout_sec and the world stayed open, failing every later collective)."""
        timeout = 60.0
        cfg = gradcomp.Config(from_env=False, min_elements=0, auto_tune=0,
                              cpu_timeout_sec=timeout)
        entered = threading.Event()

        def waiting(c):  # rank 0 in its allreduce before rank 1 raises
            if c.rank == 1:
                entered.wait(30)
                time.sleep(0.05)  # rank 0 inside the call (it fails at once either way)
                raise ValueError("rank 1's own error")
            entered.set()
            return c.allreduce(np.ones(64, np.float32))

        def late(world):  # rank 0 enters its allreduce after rank 1 raised
            def body(c):
                if c.rank == 1:
                    raise ValueError("rank 1's own error")
                # Until rank 1's comm is stopped (at most 10 s: without the stop, rank 0 goes
                # on and waits for rank 1 in its allreduce).
                give_up = time.monotonic() + 10
                while not getattr(world.comms[1], "_stopped", False) and \
                        time.monotonic() < give_up:
                    time.sleep(0.001)
                return c.allreduce(np.ones(64, np.float32))
            return body

        for make in (lambda w: waiting, late):
            world = gradcomp.CpuWorld(2, cfg)
            self.addCleanup(world.abort)
            t0 = time.monotonic()
            with self.assertRaisesRegex(ValueError, "rank 1's own error"):
                world.run(make(world), timeout=None)
            self.assertLess(time.monotonic() - t0, timeout / 4)  # not cpu_timeout_sec
            for c in world.comms:
                with self.assertRaisesRegex(gradcomp.GradcompError, "the comm is closed"):
                    c.handle
            with self.assertRaisesRegex(gradcomp.GradcompError,
                                        r"CpuWorld\(nranks=2\) is closed \(a rank's function "
                                        r"raised ValueError in an earlier run\(\).*make a new "
                                        r"CpuWorld"):
                world.run(lambda c: c.rank)
            world.close()  # nothing left to free
            entered.clear()

    def test_run_stops_the_world_when_its_timeout_ends_before_the_grace(self):
        """run's timeout (0.3 s) ends before STOP_GRACE_S with rank 1 raised and rank 0 still in
        its allreduce: run stops the world then, rank 0 returns at once, and the world is
        closed (the grace's timer, cancelled, left rank 0 waiting out cpu_timeout_sec and its
        comm busy)."""
        timeout = 60.0
        cfg = gradcomp.Config(from_env=False, min_elements=0, auto_tune=0,
                              cpu_timeout_sec=timeout)
        entered = threading.Event()

        def body(c):
            if c.rank == 1:
                entered.wait(30)
                raise ValueError("rank 1's own error")
            entered.set()
            return c.allreduce(np.ones(64, np.float32))

        world = gradcomp.CpuWorld(2, cfg)
        self.addCleanup(world.abort)
        t0 = time.monotonic()
        with self.assertRaisesRegex(ValueError, "rank 1's own error"):
            world.run(body, timeout=0.3)
        self.assertLess(time.monotonic() - t0, timeout / 4)
        with self.assertRaisesRegex(gradcomp.GradcompError, r"is closed \(a rank's function"):
            world.run(lambda c: c.rank)

    def test_run_keeps_the_world_when_every_rank_raises(self):
        """Every rank refuses the same argument (before any exchange): all of them are done
        within run's grace, so nothing is stopped, and the same world runs the next call, on
        every rank, whatever the timing of the refusals."""
        with gradcomp.CpuWorld(2, gradcomp.Config(from_env=False, min_elements=0)) as world:
            for delay in (0.0, 0.2):
                def refuse(c, delay=delay):
                    time.sleep(delay * c.rank)
                    return c.allreduce(np.ma.masked_array(np.ones(4, np.float32),
                                                          mask=[1, 0, 0, 0]))
                with self.assertRaisesRegex(_lib.InvalidArgumentError, "masked array"):
                    world.run(refuse)
                outs = world.run(lambda c: c.allreduce(np.full(4, c.rank + 1, np.float32)))
                self.assertEqual([o.tolist() for o in outs], [[3.0] * 4] * 2)

    def test_a_rank_that_closes_its_comm_fails_its_peers_at_once(self):
        """A rank that closes (destroys) its comm is gone from the in-process world: its peer's
        allreduce fails at once naming it, well before cpu_timeout_sec (until 2026-12-07 it
        waited that long for "1 of 2 ranks reached a collective")."""
        timeout = 60.0
        cfg = gradcomp.Config(from_env=False, min_elements=0, auto_tune=0,
                              cpu_timeout_sec=timeout)

        def body(c):
            if c.rank == 1:
                c.close()
                return "closed"
            return c.allreduce(np.ones(64, np.float32))

        world = gradcomp.CpuWorld(2, cfg)
        self.addCleanup(world.abort)
        t0 = time.monotonic()
        with self.assertRaisesRegex(gradcomp.GradcompError,
                                    "rank 1 of this in-process world was destroyed"):
            world.run(body, timeout=None)
        self.assertLess(time.monotonic() - t0, timeout / 4)  # not cpu_timeout_sec

    def test_run_after_close_is_refused_naming_it(self):
        """run() on a world whose comms close() or abort() closed raises at once (before,
        each rank raised "the comm is closed" on its own)."""
        for end in ("close", "abort"):
            world = gradcomp.CpuWorld(2, gradcomp.Config(from_env=False))
            self.assertEqual(world.run(lambda c: c.rank), [0, 1])
            getattr(world, end)()
            with self.assertRaisesRegex(gradcomp.GradcompError,
                                        r"is closed \(close\(\) or abort\(\) closed its "
                                        r"comms\): make a new CpuWorld"):
                world.run(lambda c: c.rank)

    def test_library_path_is_the_file_loaded(self):
        """A bare name (GRADCOMP_LIBRARY=libgradcomp.so.0, found by the loader through
        LD_LIBRARY_PATH) is reported as the file the loader mapped, not as the name. The name
        is the loaded library's own (a sanitizer build's library has another)."""
        built = os.path.realpath(_lib.library_path())
        env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"),
                   GRADCOMP_LIBRARY=os.path.basename(built),
                   LD_LIBRARY_PATH=os.path.dirname(built))
        code = "from gradcomp import _lib; print(_lib.library_path())"
        p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout.strip(), built)

    def test_a_second_copy_in_the_process_runs_its_own_code(self):
        """Two libgradcomp files in one process (a program's or an RTLD_GLOBAL one, and the
        package's): the library's calls between its own gradcomp* functions (a codec's
        chain, gradcompGetStats, the comm's environment config, the autotuner's calls) stay
        in the copy that made them, never the other copy's code on this copy's objects. The
        error set by the copy called is the one its gradcompGetLastError tells."""
        built = os.path.realpath(_lib.library_path())
        with tempfile.TemporaryDirectory() as d:
            other = os.path.join(d, "libgradcomp.so.0")
            shutil.copy(built, other)
            code = (
                "import ctypes, sys\n"
                "first = ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_GLOBAL)\n"
                "mine = ctypes.CDLL(sys.argv[2])\n"
                "for L in (first, mine):\n"
                "    L.gradcompGetLastError.restype = ctypes.c_char_p\n"
                "    L.gradcompQsgdEncodeHost.argtypes = [ctypes.c_void_p, ctypes.c_size_t,\n"
                "        ctypes.c_int, ctypes.c_int, ctypes.c_uint64, ctypes.c_void_p]\n"
                "x = (ctypes.c_float * 8)()\n"
                "out = ctypes.create_string_buffer(256)\n"
                "r = mine.gradcompQsgdEncodeHost(x, 8, 99, 512, 0, out)\n"
                "print(r)\n"
                "print((mine.gradcompGetLastError() or b'').decode())\n"
                "print((first.gradcompGetLastError() or b'').decode())\n")
            p = subprocess.run([sys.executable, "-c", code, other, built], capture_output=True,
                               text=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        result, mine, first = (p.stdout.split("\n") + ["", "", ""])[:3]
        self.assertEqual(result, "1")  # gradcompInvalidArgument
        self.assertIn("bits=99", mine)
        self.assertEqual(first, "")  # the other copy's code did not run


@unittest.skipUnless(gradcomp.has("gradcompCommAbort") and gradcomp.has("gradcompCommCreateSocket"),
                     "this libgradcomp has no gradcompCommAbort")
class CommAbort(unittest.TestCase):
    """Comm.abort (gradcompCommAbort) on the CPU world and on TCP comms; a call waiting on a
    peer while another thread aborts is tests/cpu/test_abort.cc's (it needs the comm's
    internals to know the call has started)."""

    def test_abort_frees_healthy_comms(self):
        cfg = gradcomp.Config(from_env=False, min_elements=0, auto_tune=0)
        world = gradcomp.CpuWorld(2, cfg)
        x = [np.full(256, r + 1.0, np.float32) for r in range(2)]
        world.run(lambda c: c.allreduce(x[c.rank]))
        for c in world.comms:
            c.abort()
            c.abort()  # a closed comm: nothing to do
            with self.assertRaises(gradcomp.GradcompError):
                c.handle
        world.close()

        def body(comm):
            comm.allreduce(np.ones(256, np.float32))
            comm.abort()
            return True

        self.assertEqual(socket_run(2, cfg, body, timeout=60), [True, True])

    @unittest.skipUnless(gradcomp.has("gradcompCommStop"), "this libgradcomp has no gradcompCommStop")
    def test_stop_then_abort(self):
        """Comm.stop (gradcompCommStop): later calls fail saying the comm was aborted, a second
        stop is a no-op, and abort() frees the comm afterwards."""
        cfg = gradcomp.Config(from_env=False, min_elements=0, auto_tune=0)
        world = gradcomp.CpuWorld(2, cfg)
        world.run(lambda c: c.allreduce(np.ones(256, np.float32)))
        for c in world.comms:
            c.stop()
            c.stop()
            with self.assertRaisesRegex(gradcomp.GradcompError, "was aborted"):
                c.allreduce(np.ones(256, np.float32))
            c.abort()
            with self.assertRaises(gradcomp.GradcompError):
                c.handle
        world.close()
        # close() after stop() is the abort gradcomp.h requires (destroy would wait on the
        # stopped comm's peers on NCCL).
        world = gradcomp.CpuWorld(2, cfg)
        for c in world.comms:
            c.stop()
        world.close()
        for c in world.comms:
            with self.assertRaises(gradcomp.GradcompError):
                c.handle

    def test_a_comm_whose_call_is_in_progress_stays_open_for_abort(self):
        """close() of a comm whose rank waits in a call is refused and leaves the comm open,
        so abort() can still wake and free it; leaving a `with CpuWorld` on an exception
        aborts such comms and lets the exception through."""
        cfg = gradcomp.Config(from_env=False, min_elements=0, auto_tune=0, cpu_timeout_sec=120)
        x = [np.ones(256, np.float32) for _ in range(2)]
        t0 = time.time()
        world = gradcomp.CpuWorld(2, cfg)
        # Rank 1 never calls: rank 0 waits in its allreduce (a second is ample to get there).
        with self.assertRaises(TimeoutError):
            world.run(lambda c: c.allreduce(x[0]) if c.rank == 0 else None, timeout=1)
        with self.assertRaisesRegex(gradcomp.GradcompError, "in progress"):
            world.comms[0].close()
        self.assertTrue(world.comms[0].handle)  # still open
        world.comms[0].abort()
        world.close()
        with self.assertRaises(TimeoutError):
            with gradcomp.CpuWorld(2, cfg) as w:
                w.run(lambda c: c.allreduce(x[1]) if c.rank == 0 else None, timeout=1)
        for c in w.comms:
            with self.assertRaises(gradcomp.GradcompError):
                c.handle
        self.assertLess(time.time() - t0, 60)  # the aborts, not cpu_timeout_sec

    def test_leaving_a_with_comm_keeps_a_refused_comm_open(self):
        """A `with comm:` whose close is refused (its call still waits on a peer) leaves the
        comm open for abort(): the exception leaving the block is the one seen, and without
        one the refusal is raised."""
        cfg = gradcomp.Config(from_env=False, min_elements=0, auto_tune=0, cpu_timeout_sec=120)
        x = np.ones(256, np.float32)
        world = gradcomp.CpuWorld(2, cfg)
        self.addCleanup(world.abort)
        with self.assertRaises(TimeoutError):
            with world.comms[0]:
                world.run(lambda c: c.allreduce(x) if c.rank == 0 else None, timeout=1)
        self.assertTrue(world.comms[0].handle)  # still open
        with self.assertRaisesRegex(gradcomp.GradcompError, "in progress"):
            with world.comms[0]:
                pass
        self.assertTrue(world.comms[0].handle)

    def test_abort_after_a_peer_is_gone(self):
        cfg = gradcomp.Config(from_env=False, min_elements=0, auto_tune=0, cpu_timeout_sec=60)

        def body(comm):
            if comm.rank == 1:
                return None  # socket_run closes it: its connections end
            with self.assertRaisesRegex(gradcomp.GradcompError, "lost its connection to rank 1"):
                comm.allreduce(np.ones(256, np.float32))
            comm.abort()
            return True

        t0 = time.time()
        self.assertEqual(socket_run(2, cfg, body, timeout=60)[0], True)
        self.assertLess(time.time() - t0, 30)  # the peer's end, not cpu_timeout_sec


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


class DroppedComms(unittest.TestCase):
    """A comm dropped without close() (as a file or socket dropped unclosed): ResourceWarning,
    and a CPU backend comm, whose destroy waits on no peer, is freed; close(), abort() and
    `with` leave nothing to warn about. The process still exits at once with comms open."""

    def setUp(self):
        import gc

        gc.collect()  # no comm of an earlier test collected inside this one's checks

    def drop(self, make):
        import gc

        with warnings_recorded() as got:
            make()
            gc.collect()
        return [str(w.message) for w in got if issubclass(w.category, ResourceWarning)]

    def test_a_dropped_world_warns_per_comm(self):
        msgs = self.drop(lambda: gradcomp.CpuWorld(3))
        self.assertEqual(sorted(msgs), [f"unclosed Comm(rank={r}, size=3)" for r in range(3)])

    def test_a_comm_is_not_copied_or_pickled(self):
        # A copy would be a second owner of the handle: the first of the two closed or
        # collected would free the comm under the other (a crash on its next call).
        import copy
        import pickle

        with gradcomp.CpuWorld(1, min_elements=0) as w:
            c = w.comms[0]
            for dup in (copy.copy, copy.deepcopy, pickle.dumps):
                with self.assertRaisesRegex(TypeError, r"^Comm\(rank=0, size=1\) cannot be "
                                                       r"copied or pickled"):
                    made = dup(c)
                    if isinstance(made, comm_mod.Comm):
                        made._h = ctypes.c_void_p()  # not a second owner, whatever follows
            with self.assertRaises(TypeError):
                copy.deepcopy(w)
            x = np.ones(8, np.float32)
            self.assertTrue(np.array_equal(c.allreduce(x), np.ones(8, np.float32)))

    def test_a_world_is_not_copied_or_pickled(self):
        # copy.copy would share the comms: closing the copy would close the world's comms.
        import copy
        import pickle

        with gradcomp.CpuWorld(2, min_elements=0) as w:
            for dup in (copy.copy, copy.deepcopy, pickle.dumps):
                with self.assertRaisesRegex(TypeError, r"^CpuWorld\(nranks=2\) cannot be "
                                                       r"copied or pickled: .* CpuWorld itself"):
                    made = dup(w)
                    if isinstance(made, comm_mod.CpuWorld):
                        made.comms = []  # closes nothing of w's, whatever follows
            outs = w.run(lambda c: c.allreduce(np.ones(8, np.float32)))
            self.assertTrue(all(np.array_equal(o, np.full(8, 2, np.float32)) for o in outs))

    def test_a_handle_an_open_comm_owns_is_not_adopted(self):
        # Two owners of one handle: the second close frees it again (a crash), and the first
        # one's calls after the other's close read freed memory.
        with gradcomp.CpuWorld(2, min_elements=0) as w:
            c = w.comms[0]
            for h in (c.handle.value, c.handle):
                with self.assertRaisesRegex(_lib.InvalidArgumentError,
                                            rf"handle 0x{c.handle.value:x} is owned by "
                                            r"Comm\(rank=0, size=2\)"):
                    made = comm_mod.Comm(h, host=True)
                    made._h = ctypes.c_void_p()  # not a second owner, whatever follows
            with self.assertRaisesRegex(_lib.InvalidArgumentError, "handle is NULL"):
                comm_mod.Comm(0, host=True)
            outs = w.run(lambda c: c.allreduce(np.ones(8, np.float32)))
            self.assertTrue(all(np.array_equal(o, np.full(8, 2, np.float32)) for o in outs))
        # Closed, a comm's handle is held no longer: a comm the library makes later at the same
        # address is adopted (as if: the registry names closed c for w2's handle).
        with gradcomp.CpuWorld(1) as w2:
            h = w2.comms[0].handle.value
            comm_mod._owners[h] = c
            w2.comms[0]._h = ctypes.c_void_p()  # handed to the Comm below, which frees it
            again = comm_mod.Comm(h, host=True)
            self.assertEqual((again.rank, again.size), (0, 1))
            again.close()

    def test_a_handle_that_is_not_a_live_comm_is_refused(self):
        # Before, Comm(handle) called gradcompCommRank on whatever the handle pointed at (a freed
        # comm, other memory), and a handle the library then refused was left as the Comm's own:
        # its collection destroyed it again.
        import gc
        import warnings

        w = gradcomp.CpuWorld(2)
        dead = w.comms[0].handle.value
        w.comms[0].close()
        junk = ctypes.create_string_buffer(b"\xa5" * 4096)
        for h in (dead, ctypes.addressof(junk)):
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")  # an owner of the handle warns when collected
                with self.assertRaisesRegex(_lib.InvalidArgumentError,
                                            rf"^handle 0x{h:x} is not a gradcompComm_t .*: "
                                            rf"comm 0x{h:x} is not a live gradcomp communicator"):
                    comm_mod.Comm(h, host=True)
                gc.collect()
            self.assertEqual([str(m.message) for m in seen], [])
        # The world's live rank is untouched; adopted, its handle works.
        live = w.comms[1]
        h = live.handle.value
        live._h = ctypes.c_void_p()  # handed to the Comm below, which frees it
        again = comm_mod.Comm(h, host=True)
        self.assertEqual((again.rank, again.size), (1, 2))
        again.close()
        with self.assertRaisesRegex(_lib.InvalidArgumentError, rf"^handle 0x{h:x} is not"):
            comm_mod.Comm(h, host=True)

    def test_closed_aborted_and_with_worlds_do_not_warn(self):
        def closed():
            gradcomp.CpuWorld(2).close()

        def aborted():
            gradcomp.CpuWorld(2).abort()

        def within():
            with gradcomp.CpuWorld(2) as w:
                w.run(lambda c: c.allreduce(np.ones(8, np.float32)))

        for make in (closed, aborted, within):
            self.assertEqual(self.drop(make), [], make.__name__)

    def test_warnings_as_errors_still_free_the_comm_and_report_it(self):
        # Under -W error (pytest's filterwarnings = error) the ResourceWarning becomes an
        # exception in __del__, which Python reports through sys.unraisablehook; the CPU comm is
        # freed before it, not leaked.
        import gc
        import sys
        import warnings
        from unittest import mock

        fake = mock.Mock()
        fake.gradcompCommDestroy.return_value = 0
        seen = []
        old = sys.unraisablehook
        sys.unraisablehook = lambda u: seen.append(u.exc_type)
        try:
            with mock.patch.object(comm_mod, "lib", return_value=fake), \
                    warnings.catch_warnings():
                warnings.simplefilter("error")
                c = comm_mod.Comm.__new__(comm_mod.Comm)
                c._h, c.host, c.rank, c.size = ctypes.c_void_p(0x1234), True, 0, 2
                del c
                gc.collect()
        finally:
            sys.unraisablehook = old
        fake.gradcompCommDestroy.assert_called_once()
        self.assertEqual(seen, [ResourceWarning])

    def test_a_comm_is_a_context_manager(self):
        w = gradcomp.CpuWorld(2)
        with w.comms[0] as c:
            self.assertIs(c, w.comms[0])
        with self.assertRaisesRegex(gradcomp.GradcompError, "closed"):
            c.handle
        w.close()  # the closed one stays closed, the other goes

    def test_a_dropped_nccl_comm_warns_and_is_not_destroyed(self):
        # Its destroy waits for the comm's stream and NCCL sub-communicators (possibly on
        # peers): a finalizer must not make it. A stopped CPU comm is aborted, not destroyed.
        from unittest import mock

        fake = mock.Mock()
        fake.gradcompCommDestroy.return_value = 0
        fake.gradcompCommAbort.return_value = 0
        with mock.patch.object(comm_mod, "lib", return_value=fake):
            c = comm_mod.Comm.__new__(comm_mod.Comm)
            c._h, c.host, c.rank, c.size = ctypes.c_void_p(0x1234), False, 0, 2
            msgs = self.drop(lambda: c.__del__())
            self.assertEqual(len(msgs), 1, msgs)
            self.assertRegex(msgs[0], r"unclosed Comm\(rank=0, size=2\): an NCCL comm is not "
                             r"freed when dropped")
            fake.gradcompCommDestroy.assert_not_called()
            fake.gradcompCommAbort.assert_not_called()
            c._h = ctypes.c_void_p()  # nothing left for the real finalizer
            s = comm_mod.Comm.__new__(comm_mod.Comm)
            s._h, s.host, s.rank, s.size, s._stopped = ctypes.c_void_p(0x5678), True, 1, 2, True
            self.drop(lambda: s.__del__())
            fake.gradcompCommDestroy.assert_not_called()
            self.assertEqual(fake.gradcompCommAbort.call_args[0][0].value, 0x5678)
            self.assertFalse(s._h)

    @unittest.skipUnless(os.path.exists("/proc/self/status"), "no /proc: no RSS to read")
    @unittest.skipIf("libasan" in os.environ.get("LD_PRELOAD", ""),
                     "under ASan freed memory stays in its quarantine: RSS cannot show a free "
                     "(ASan's own leak check covers the library there)")
    def test_dropped_worlds_free_their_memory(self):
        import gc

        x = np.ones(1 << 16, np.float32)

        def use():
            w = gradcomp.CpuWorld(4, min_elements=0)
            w.run(lambda c: c.allreduce(x.copy()))

        with warnings_recorded():
            use()  # the allocator's first growth
            gc.collect()
            before = rss_kib()
            for _ in range(40):
                use()
            gc.collect()
            grown = rss_kib() - before
        # Each world's comms hold ~2 MB after a call (residuals, workspaces): left allocated,
        # 40 worlds grow the process by ~85 MB; freed, by the allocator's noise.
        self.assertLess(grown, 40 * 512, f"RSS grew by {grown} KiB over 40 dropped worlds")

    @unittest.skipUnless(gradcomp.has("gradcompCommCreateSocket") and
                         os.path.isdir("/proc/self/fd"), "no socket comm or no /proc/self/fd")
    def test_dropped_socket_comms_close_their_connections(self):
        import gc

        cfg = gradcomp.Config(from_env=False, auto_tune=0)
        from gradcomp._ports import reserve_port

        def dropped_pair():
            with reserve_port("127.0.0.1") as held:
                root = f"127.0.0.1:{held.port}"
                comm_mod.run_on_threads(2, lambda r: gradcomp.Comm.socket(2, r, root, cfg).rank,
                                        60.0)

        with warnings_recorded():
            dropped_pair()
            gc.collect()
            before = open_fds()
            for _ in range(5):
                dropped_pair()
            gc.collect()
            self.assertEqual(open_fds(), before, "dropped socket comms kept their sockets")

    def test_exit_with_comms_open_does_not_hang(self):
        # A world left open at exit, one whose rank 0 is stuck in a call (its peer never came:
        # run() timed out), and a comm dropped after stop(): the interpreter exits at once.
        code = (
            "import sys, numpy as np; sys.path.insert(0, %r); import gradcomp\n"
            "w = gradcomp.CpuWorld(2, min_elements=0, cpu_timeout_sec=600)\n"
            "s = gradcomp.CpuWorld(2, min_elements=0, cpu_timeout_sec=600)\n"
            "try:\n"
            "    s.run(lambda c: c.allreduce(np.ones(64, np.float32)) if c.rank == 0 else 0,"
            " timeout=0.5)\n"
            "except TimeoutError:\n"
            "    pass\n"
            "t = gradcomp.CpuWorld(2)\n"
            "t.comms[1].stop()\n"
            "del t\n"
            "print('end')\n") % os.path.join(ROOT, "python")
        t0 = time.time()
        out = subprocess.run([sys.executable, "-W", "always::ResourceWarning", "-c", code],
                             capture_output=True, text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.strip(), "end", out.stderr)
        self.assertLess(time.time() - t0, 60)


class warnings_recorded:
    """warnings.catch_warnings(record=True) with every warning kept."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings(record=True)
        got = self._ctx.__enter__()
        warnings.simplefilter("always")
        return got

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


if __name__ == "__main__":
    unittest.main()
