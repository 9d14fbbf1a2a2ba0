"""gradcompConfig_t as keyword arguments: defaults, then GRADCOMP_*, then yours."""
import ctypes
import difflib
import math
import numbers
import re

from . import _types as T
from . import _lib
from ._lib import InvalidArgumentError, check, lib

# Every field but structSize and the reserved padding (gradcompConfig_t.reserved0 and
# reserved1: unread).
_C_NAME = {T.snake(n): n for n, _ in T.CONFIG_FIELDS
           if n != "structSize" and not n.startswith("reserved")}
_C_TYPE = dict(T.CONFIG_FIELDS)
_INT_TYPES = (ctypes.c_int, ctypes.c_size_t, ctypes.c_uint64)
_FLT_MIN = 1.1754943508222875e-38  # the smallest normal float (C's FLT_MIN)
_FLT_MAX = 3.4028234663852886e+38  # the largest float (C's FLT_MAX)


def settings():
    """The keyword names a Config accepts (one per gradcompConfig_t field)."""
    return list(_C_NAME)


def env_names():
    """The GRADCOMP_* variables the loaded library reads (gradcompEnvName: its own table, so
    never out of step with it); None for a library without gradcompEnvName."""
    if not hasattr(lib(), "gradcompEnvName"):
        return None
    names, i = [], 0
    while True:
        name = lib().gradcompEnvName(i)
        if name is None:
            return names
        names.append(name.decode())
        i += 1


def _is_bool(value):
    """True for Python's and numpy's booleans (numpy.bool_ is no numbers.Integral, bool is)."""
    t = type(value)
    return isinstance(value, bool) or (t.__module__ == "numpy" and t.__name__ in ("bool", "bool_"))


def _real(value, name):
    """value as a float: a real number (not a bool) that a C float holds."""
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(f"{name}={value!r} is not a number", 1)
    try:
        x = float(value)
    except OverflowError:
        raise InvalidArgumentError(f"{name}={value!r} is too large for a float", 1) from None
    if math.isfinite(x) and math.isinf(ctypes.c_float(x).value):
        # Every caller passes a C float: past FLT_MAX it would arrive as inf, and the library's
        # sentence would name inf, not the value given.
        raise InvalidArgumentError(f"{name}={value!r} is too large in magnitude for a float (at "
                                   f"most {_FLT_MAX:g})", 1)
    if x != 0.0 and not math.isnan(x) and not abs(ctypes.c_float(x).value) >= _FLT_MIN:
        # As GRADCOMP_* floats are read (plugin/config.cc): a nonzero value the float would
        # flush toward 0 (0 is "off" for some settings, clip_norm) is refused, not changed; the
        # library's sentence would name the flushed value (density=0), not the value given.
        # NaN is left to the library, whose sentence gives the setting's range.
        raise InvalidArgumentError(
            f"{name}={value!r} is not a number that a float holds: a nonzero value must be "
            f"at least {_FLT_MIN:g}", 1)
    return x


def _coerce(key, cname, value):
    choices = T.CHOICES.get(cname)
    if choices is not None and isinstance(value, str):
        v = choices.get(value.lower())
        if v is None:
            raise InvalidArgumentError(
                f"{key}={value!r} is not one of {'|'.join(choices)}", 1)
        return v
    ctype = _C_TYPE[cname]
    if ctype is ctypes.c_float:
        return _real(value, key)
    if _is_bool(value):
        # An on/off setting takes True and False; for a number (bits=True) a bool is a mistake,
        # not 1.
        if cname not in T.FLAG_FIELDS:
            raise InvalidArgumentError(_bool_refusal(key, cname, value), 1)
        value = int(value)
    if not isinstance(value, numbers.Integral):
        raise InvalidArgumentError(f"{key}={value!r} is not an integer", 1)
    value = int(value)
    if ctype in (ctypes.c_size_t, ctypes.c_uint64):
        lo, hi = 0, 2**64 - 1
    else:
        lo, hi = -2**31, 2**31 - 1
    if not lo <= value <= hi:
        raise _OutOfCRange(value, lo, hi)
    return value


def _bool_refusal(key, cname, value):
    """The sentence refusing a bool for a setting that is not on/off, with the setting's range:
    from the library's refusal of the C type's far bound in a default config (its own table
    names the range and the GRADCOMP_* variable); the C type's range where it refuses none."""
    lo, hi = (-2**31, 2**31 - 1) if _C_TYPE[cname] is ctypes.c_int else (0, 2**64 - 1)
    for bound in (lo, hi):
        probe = T.ConfigStruct()
        check(lib().gradcompConfigInitSized(ctypes.byref(probe), ctypes.sizeof(probe)))
        setattr(probe, cname, bound)
        if lib().gradcompConfigValidate(ctypes.byref(probe)) == 0:
            continue
        m = re.match(rf"{cname}={bound} \((GRADCOMP_\w+)\) is (out of range|not one of) (.*)$",
                     _lib.last_error())
        if m is None:
            continue
        env, how, allowed = m.groups()
        choices = T.CHOICES.get(cname)
        if how == "not one of" and choices is not None:
            return (f"{key}={value!r} is a bool, not one of {'|'.join(choices)} or its number "
                    f"({env})")
        return f"{key}={value!r} is a bool, not an integer in {allowed} ({env})"
    return f"{key}={value!r} is a bool, not an integer in {lo}..{hi}"


# The GRADCOMP_* variables whose name is not GRADCOMP_ and their setting's upper case
# (plugin/config.cc's table), without the prefix.
_ENV_SHORT = {"BUCKET": "bucket_size", "EF": "error_feedback", "AUTO": "auto_tune",
              "CPU_TIMEOUT": "cpu_timeout_sec"}


def _setting_named(key):
    """The setting a keyword names in another spelling, or None: a C field's name (bucketSize),
    a GRADCOMP_* variable's, with or without the prefix and in either case (GRADCOMP_METHOD,
    DENSITY, ef as GRADCOMP_EF is error_feedback)."""
    if T.snake(key) in _C_NAME:
        return T.snake(key)
    env = key.upper()
    env = env[len("GRADCOMP_"):] if env.startswith("GRADCOMP_") else env
    if env.lower() in _C_NAME:
        return env.lower()
    return _ENV_SHORT.get(env)


def _nearest(key):
    """The setting a mistyped keyword most likely meant (_setting_named, or the closest name),
    or None."""
    named = _setting_named(key)
    if named is not None:
        return named
    near = difflib.get_close_matches(key, list(_C_NAME), n=1)
    return near[0] if near else None


class _OutOfCRange(Exception):
    """An integer past its C field's type: Config.update asks the library about the type's
    bounds instead, so that the sentence gives the setting's range and GRADCOMP_* name."""

    def __init__(self, value, lo, hi):
        super().__init__(value)
        self.value, self.lo, self.hi = value, lo, hi


class Config:
    """A gradcompConfig_t built from keyword settings.

    Config(method="qsgd", bits=4) starts from gradcompConfigFromEnv (the
    defaults plus every GRADCOMP_* variable set; from_env=False skips them),
    applies the keywords (snake_case of the C fields: bucket_size,
    min_elements, error_feedback, ...; enum fields also take the GRADCOMP_*
    spellings, method="dgc", algo="ring") and validates with
    gradcompConfigValidate. A bad value raises InvalidArgumentError (a
    ValueError) with the library's sentence, e.g. "bits=9 (GRADCOMP_BITS) is out of
    range 2..8".
    """

    def __init__(self, from_env=True, **settings_):
        self.struct = T.ConfigStruct()
        init = lib().gradcompConfigFromEnvSized if from_env else lib().gradcompConfigInitSized
        check(init(ctypes.byref(self.struct), ctypes.sizeof(self.struct)))
        self.update(**settings_)

    def update(self, **settings_):
        unknown = [k for k in settings_ if k not in _C_NAME]
        if unknown:
            near = [f"{k} (did you mean {m}?)" if m else k for k in unknown for m in [_nearest(k)]]
            raise InvalidArgumentError(
                f"unknown setting {', '.join(near)}; the settings are {', '.join(_C_NAME)}", 1)
        trial = T.ConfigStruct.from_buffer_copy(self.struct)
        past = {}  # key: the integer given past its C type, and that type's bounds
        for key, value in settings_.items():
            cname = _C_NAME[key]
            try:
                setattr(trial, cname, _coerce(key, cname, value))
            except _OutOfCRange as e:
                past[key] = e
        if past:
            self._refuse_past(trial, settings_, past)
        try:
            check(lib().gradcompConfigValidate(ctypes.byref(trial)))
        except InvalidArgumentError as e:
            raise InvalidArgumentError(self._keywords(str(e), settings_), e.result) from None
        ctypes.memmove(ctypes.byref(self.struct), ctypes.byref(trial), ctypes.sizeof(trial))
        return self

    @staticmethod
    def _keywords(msg, settings_):
        # The library names C fields (warmupSteps=-1); say the keyword the caller typed.
        for key in settings_:
            cname = _C_NAME[key]
            if cname != key:
                msg = msg.replace(f"{cname}=", f"{key}=")
        return msg

    def _refuse_past(self, trial, settings_, past):
        """Raises for the integers given past their C types: each of the type's bounds (the
        value's side first) is put in its place, and the library's refusal of one, which names
        the setting's range, is raised naming the value given."""
        for key, e in past.items():
            cname, other_refusal = _C_NAME[key], None
            for bound in ((e.lo, e.hi) if e.value < e.lo else (e.hi, e.lo)):
                probe = T.ConfigStruct.from_buffer_copy(trial)
                for other, o in past.items():
                    setattr(probe, _C_NAME[other], bound if other == key else o.lo)
                if lib().gradcompConfigValidate(ctypes.byref(probe)) == 0:
                    continue
                msg = _lib.last_error()
                if f"{cname}={bound} " in msg:
                    msg = msg.replace(f"{cname}={bound} ", f"{cname}={e.value} ")
                    raise InvalidArgumentError(self._keywords(msg, settings_), 1)
                other_refusal = other_refusal or msg  # another setting's
            if other_refusal is not None:
                raise InvalidArgumentError(self._keywords(other_refusal, settings_), 1)
            raise InvalidArgumentError(f"{key}={e.value} is out of range {e.lo}..{e.hi}", 1)

    def __getattr__(self, key):
        cname = _C_NAME.get(key)
        if cname is None:
            raise AttributeError(key)
        value = getattr(self.struct, cname)
        choices = T.CHOICES.get(cname)
        if choices is not None:
            names = {v: k for k, v in choices.items()}
            return names.get(value, value)
        return value

    def as_dict(self):
        return {k: getattr(self, k) for k in _C_NAME}

    def copy(self):
        c = Config.__new__(Config)
        c.struct = T.ConfigStruct.from_buffer_copy(self.struct)
        return c

    def __repr__(self):
        return "Config(" + ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items()) + ")"


def as_config(config=None, **settings_):
    """A Config from None (GRADCOMP_* defaults), a Config (copied) or keywords."""
    if config is None:
        return Config(**settings_)
    if not isinstance(config, Config):
        raise TypeError(f"config must be a gradcomp.Config, not {type(config).__name__}")
    return config.copy().update(**settings_)
