"""Profiles: named settings in a config file, and where each profile's API key is kept.

``$XDG_CONFIG_HOME/opsnow/config`` (else ``~/.config/opsnow/config``) is an
INI file, a ``[default]`` section and named ones::

    [default]
    region = global             ; or base_url = https://...
    token_cache = file          ; the values OPSNOW_TOKEN_CACHE takes
    api_key_source = keyring

    [kr]
    region = kr
    api_key_source = command
    api_key_command = pass show opsnow/kr

The file never holds a key. A profile's key comes from its source:

- ``keyring``: the OS keyring (the ``keyring`` library, the ``keyring``
  extra), service :data:`KEYRING_SERVICE`, the profile's name as the user;
- ``command``: the first line of ``api_key_command``'s output (Vault, 1Password,
  ``pass``...), run without a shell, bounded in time and output, its stderr not
  echoed;
- ``plaintext``: ``credentials`` beside ``config``, created 0600, only when
  the user asked for it (``opsnow configure --insecure-storage``).

The files name a command to run and a URL to send the key to: they are obeyed
only if no other user could have written them. ``docs/design.md``, "Profiles",
gives the resolution order, these trust rules and the limits.
"""

from __future__ import annotations

import configparser
import functools
import io
import logging
import os
import shlex
import threading
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

from . import _clock
from ._config import PROFILE_ENV, base_url_for_region, token_cache_place
from ._hosts import check_secure_url
from ._keysources import KILL_WAIT, BackgroundCall, checked_key, run_helper
from ._runtime import RuntimeState
from ._userfiles import (
    MAX_CONFIG_SIZE,
    FileVersion,
    file_version,
    read_regular,
    replace_atomically,
    trust_problem,
)
from .errors import ApiKeyUnavailableError

log = logging.getLogger("requests_opsnow")

DEFAULT_PROFILE = "default"
KEYRING_SERVICE = "requests-opsnow"
"""The keyring service name; each profile's key is stored under the profile's name."""

WRITE_LOCK_WAIT = 10.0
"""Seconds ``opsnow configure`` or ``logout`` waits for another one writing the files."""

API_KEY_COMMAND_TIMEOUT = 10.0
"""Seconds an ``api_key_command`` may take before it is stopped (with its process group)
and counted as failed."""

KEYRING_TIMEOUT = 30.0
"""Seconds a keyring call may take (a keyring may wait for its password to be typed); then
the key is unavailable, and the call goes on in its own thread until the backend returns."""

KEY_SOURCE_RETRY_AFTER = 30.0
"""Seconds a key source that failed is not asked again in this process: auths built in that
time raise its error at once (a failing command took its 10 s on every build)."""

MAX_KEY_COMMAND_OUTPUT = 65536
"""Bytes of an ``api_key_command``'s output read at most (its first line is the key, the
rest what ``pass show`` adds); a helper that prints more is stopped and counted as failed."""

CREDENTIALS_NAME = "credentials"
"""The plaintext keys' file, beside the config file."""

KEY_SOURCES = ("keyring", "command", "plaintext")
SETTINGS = ("region", "base_url", "token_cache", "api_key_source", "api_key_command")
"""What a profile section may hold (never a key)."""


class Profile(NamedTuple):
    """One section of the config file."""

    name: str
    region: str | None
    base_url: str | None
    token_cache: str | None
    api_key_source: str | None
    api_key_command: str | None


def config_folder() -> Path:
    """``$XDG_CONFIG_HOME/opsnow``, else ``~/.config/opsnow``; ValueError if neither is known."""
    return _known(_config_paths())[0]


def config_path() -> Path:
    return _known(_config_paths())[1]


def credentials_path() -> Path:
    return _known(_config_paths())[2]


def read_profiles() -> dict[str, Profile]:
    """Every profile in the config file: {} when there is no file (or no folder for one,
    as for a process with no ``HOME``); ValueError if the file is unreadable."""
    paths = _config_paths()
    return _files.profiles(paths[1]) if paths is not None else {}


def _config_paths() -> tuple[Path, Path, Path] | None:
    return _config_paths_for(os.environ.get("XDG_CONFIG_HOME", ""), os.environ.get("HOME"))


@functools.lru_cache(maxsize=4)
def _config_paths_for(xdg: str, home: str | None) -> tuple[Path, Path, Path] | None:
    """The folder, config file and credentials file (None: no home folder to put them in);
    remembered, as an auth built per call asks every time. ``home`` is only part of the
    key: ``expanduser`` reads ``HOME`` itself."""
    if os.path.isabs(xdg):
        folder = Path(xdg, "opsnow")
    else:
        home_folder = os.path.expanduser("~")
        if not os.path.isabs(home_folder):
            return None
        folder = Path(home_folder, ".config", "opsnow")
    return folder, folder / "config", folder / CREDENTIALS_NAME


def _known(paths: tuple[Path, Path, Path] | None) -> tuple[Path, Path, Path]:
    if paths is None:
        raise ValueError("no config folder: set XDG_CONFIG_HOME or HOME, or set OPSNOW_API_KEY")
    return paths


def named_profile(name: str | None) -> Profile | None:
    """The profile ``name`` (else ``$OPSNOW_PROFILE``, else ``default`` if there is one).

    A profile asked for by name that does not exist is a ValueError saying how
    to create it.
    """
    wanted = name if name is not None else os.environ.get(PROFILE_ENV, "").strip() or None
    if wanted is not None:
        check_profile_name(wanted)
    profiles = read_profiles()
    if wanted is None:
        return profiles.get(DEFAULT_PROFILE)
    if wanted not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise ValueError(
            f"no OpsNow profile {wanted!r} in {config_path()} (profiles: {known});"
            f" create it with: opsnow configure --profile {wanted}"
        )
    return profiles[wanted]


def check_profile_name(name: str) -> None:
    """ValueError unless ``name`` can name a section of the config file and be found again:
    not empty, no surrounding spaces, no control characters (a line break would end the
    section's header)."""
    if not name or name != name.strip() or _has_control_character(name):
        raise ValueError(
            f"{name!r} is not a profile name: use letters, digits and punctuation,"
            " without control characters or surrounding spaces"
        )


def check_profile(profile: Profile) -> None:
    """ValueError unless every setting of ``profile`` is one the library accepts when it
    reads it back (the same checks, made before anything is saved or run)."""
    check_profile_name(profile.name)
    where = f"profile {profile.name!r}"
    for field, value in zip(Profile._fields[1:], profile[1:]):
        if value is not None and _has_control_character(value):
            raise ValueError(f"{where}: {field} holds a control character (a line break?)")
    if profile.region is not None:
        base_url_for_region(profile.region)
    if profile.base_url is not None:
        check_secure_url(profile.base_url, f"{where}: base_url")
    if profile.token_cache is not None:
        token_cache_place(profile.token_cache, f"{where}: token_cache")
    if profile.api_key_source is not None and profile.api_key_source not in KEY_SOURCES:
        raise ValueError(
            f"{where}: api_key_source must be one of {', '.join(KEY_SOURCES)},"
            f" got {profile.api_key_source!r}"
        )
    if profile.api_key_command is not None:
        try:
            argv = shlex.split(profile.api_key_command)
        except ValueError as exc:
            raise ValueError(f"{where}: api_key_command cannot be split: {exc}") from None
        if not argv:
            raise ValueError(f"{where}: api_key_command is empty")


def _has_control_character(text: str) -> bool:
    return any(unicodedata.category(character) == "Cc" for character in text)


def api_key_of(profile: Profile) -> str | None:
    """The profile's key from its source (None if it names no source).

    Remembered for the life of the process, per profile and source, so that an
    auth built per call does not run a command or ask the keyring every time.
    """
    return _keys.key(profile)


class ProfileKey:
    """A profile's key source, read again after its key was rejected (a
    :class:`~requests_opsnow._keysources.KeySource`): a rotated keyring entry, command
    output or credentials file is used without a restart."""

    __slots__ = ("profile",)

    def __init__(self, profile: Profile) -> None:
        self.profile = profile

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.profile.name!r})"

    def changed(self) -> bool:
        return False  # only a rejection says so: asking costs a command or a keyring call

    def key_now(self) -> str | None:
        try:
            return _keys.read_again(self.profile)
        except (ApiKeyUnavailableError, ValueError) as exc:  # a config broken since, say
            log.warning("the API key was rejected and reading it again failed: %s", exc)
            return None


# -- writing (opsnow configure, opsnow logout) ----------------------------------------------


def save_profile(profile: Profile, plaintext_key: str | None = None) -> Path:
    """Write ``profile``'s section into the config file (made 0600 in a 0700 folder), and
    ``plaintext_key`` into the credentials file (a ``plaintext`` profile); a key the
    credentials file held for a profile that now keeps it elsewhere is removed."""
    check_profile(profile)
    path = config_path()
    with _one_writer():
        _set_plaintext_key(profile.name, plaintext_key)
        parser = _fresh_parser(path)
        section = {name: value for name, value in zip(Profile._fields, profile) if name != "name"}
        parser[profile.name] = {name: str(value) for name, value in section.items() if value}
        _write_private(path, parser)
    _keys.forget(profile)
    return path


def store_in_keyring(profile: Profile, api_key: str) -> None:
    """Keep ``api_key`` in the OS keyring, under the profile's name."""
    _keyring_call(profile, "set_password", KEYRING_SERVICE, profile.name, api_key)
    _keys.forget(profile)


def delete_key(profile: Profile) -> bool:
    """Delete every key stored for the profile: its plaintext one, whatever its source
    says now, and its keyring entry if it keeps its key there; True if one was there."""
    _keys.forget(profile)
    with _one_writer():
        removed = _set_plaintext_key(profile.name, None)
    in_keyring = profile.api_key_source == "keyring"
    if in_keyring and _keyring_call(profile, "get_password", KEYRING_SERVICE, profile.name):
        _keyring_call(profile, "delete_password", KEYRING_SERVICE, profile.name)
        removed = True
    return removed


def keyring_problem() -> str | None:
    """Why keys cannot go in the OS keyring here, or None when a real backend exists; asked
    within :data:`KEYRING_TIMEOUT` (loading a backend may wait on it)."""
    answer = _keys.ask_keyring(_keyring_problem_now, KEYRING_TIMEOUT)
    return answer if isinstance(answer, str) or answer is None else answer.problem


def _keyring_problem_now() -> str | None:
    try:
        import keyring
        from keyring.backends import fail
    except ImportError:
        return "the keyring library is not installed (pip install 'requests-opsnow[keyring]')"
    try:
        backend = keyring.get_keyring()
    except Exception as exc:  # noqa: BLE001 - a backend named in PYTHON_KEYRING_BACKEND, say
        return f"the keyring backend could not be loaded ({type(exc).__name__})"
    if isinstance(backend, fail.Keyring) or type(backend).__module__.endswith(".null"):
        return (
            "no OS keyring backend is available on this machine (as on a headless Linux"
            " server without a Secret Service)"
        )
    return None


# -- internals -----------------------------------------------------------------------------


def _key_from_source(profile: Profile) -> str | None:
    source = profile.api_key_source or ("command" if profile.api_key_command else None)
    if source is None:
        return None
    if source == "keyring":
        key = _keyring_call(profile, "get_password", KEYRING_SERVICE, profile.name)
        if not key:
            raise ApiKeyUnavailableError(
                f"profile {profile.name!r}: no key in the OS keyring; store one with:"
                f" opsnow configure --profile {profile.name}"
            )
        return checked_key(str(key), f"profile {profile.name!r}: the key in the OS keyring")
    if source == "command":
        return _key_from_command(profile)
    if source == "plaintext":
        return _key_from_credentials(profile)
    raise ValueError(
        f"profile {profile.name!r}: api_key_source must be one of {', '.join(KEY_SOURCES)},"
        f" got {source!r}"
    )


def _key_from_command(profile: Profile) -> str:
    if not profile.api_key_command:
        raise ValueError(
            f"profile {profile.name!r}: api_key_source = command needs an api_key_command"
        )
    where = f"profile {profile.name!r}: api_key_command"
    done = run_helper(
        profile.api_key_command, timeout=API_KEY_COMMAND_TIMEOUT, limit=MAX_KEY_COMMAND_OUTPUT
    )
    if isinstance(done, str):
        raise ApiKeyUnavailableError(f"{where} {done}")
    if done.status != 0:
        raise ApiKeyUnavailableError(
            f"{where} failed with exit status {done.status} (its output is not shown:"
            " it may hold the key); run it by hand to see why"
        )
    output = done.output.decode("utf-8", "replace").strip()
    if not output:
        raise ApiKeyUnavailableError(f"{where} printed no key")
    key = output.splitlines()[0].strip()  # like `pass show`: the key, then other fields
    return checked_key(key, f"{where}'s first line")


def _key_from_credentials(profile: Profile) -> str:
    path = credentials_path()
    parser = _files.parser(path)
    key = parser.get(profile.name, "api_key", fallback="").strip()
    if not key:
        raise ApiKeyUnavailableError(
            f"profile {profile.name!r}: no api_key for it in {path}; store one with:"
            f" opsnow configure --profile {profile.name} --insecure-storage"
        )
    return checked_key(key, f"profile {profile.name!r}: the api_key in {path}")


def _keyring_call(profile: Profile, method: str, *args: str) -> Any:
    """``keyring.<method>(*args)`` within :data:`KEYRING_TIMEOUT`; any failure is an
    ApiKeyUnavailableError naming the profile and the backend error's class, never its
    message (a backend's message may quote what it was given)."""
    answer = _keys.ask_keyring(functools.partial(_in_keyring, method, args), KEYRING_TIMEOUT)
    if not isinstance(answer, _KeyringFailure):
        return answer
    if answer.unusable:
        raise ApiKeyUnavailableError(
            f"profile {profile.name!r} keeps its key in the OS keyring, but {answer.problem};"
            " use api_key_command, or OPSNOW_API_KEY"
        )
    raise ApiKeyUnavailableError(f"profile {profile.name!r}: {answer.problem}")


def _in_keyring(method: str, args: tuple[str, ...]) -> Any:
    problem = _keyring_problem_now()
    if problem is not None:
        return _KeyringFailure(problem, unusable=True)
    import keyring

    return getattr(keyring, method)(*args)


class _KeyringFailure(NamedTuple):
    problem: str
    unusable: bool = False
    """No keyring here at all (rather than a keyring that failed)."""


def _set_plaintext_key(name: str, api_key: str | None) -> bool:
    """Put ``api_key`` in the credentials file as ``name``'s (None: remove the one there);
    True if the file changed. Nothing is written when nothing changes."""
    path = credentials_path()
    parser = _fresh_parser(path)
    if api_key is not None:
        parser[name] = {"api_key": api_key}
    elif not parser.remove_section(name):
        return False
    _write_private(path, parser)
    return True


def _fresh_parser(path: Path) -> configparser.ConfigParser:
    """The file as it is on disk now (a writer must not build on a remembered copy)."""
    _files.forget(path)
    return _files.parser(path)


@contextmanager
def _one_writer() -> Iterator[None]:
    """Held while the config and credentials files are read and written again: one writer
    at a time (other processes too), so that no saved profile or key is lost. The lock
    file is ``config.lock`` beside them; waited for up to :data:`WRITE_LOCK_WAIT` s."""
    from filelock import FileLock, Timeout  # only writers need it

    folder = config_folder()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = FileLock(str(folder / "config.lock"), timeout=WRITE_LOCK_WAIT, mode=0o600)
    try:
        lock.acquire()
    except Timeout:
        raise ValueError(
            f"another opsnow configure or logout is writing {folder} (it held"
            f" {folder / 'config.lock'} for {WRITE_LOCK_WAIT:g} s); nothing was saved"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _write_private(path: Path, parser: configparser.ConfigParser) -> None:
    """Write atomically, 0600 from creation, in a folder of our own (0700)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = io.StringIO()
    parser.write(text)
    replace_atomically(path, text.getvalue(), through_link=True, sync=True)
    _files.forget(path)


class _Files(RuntimeState):
    """Parsed INI files, read again when they change (an auth per call reads none)."""

    _runtime_fields = ("_lock", "_parsed")

    def __init__(self) -> None:
        self._start_runtime()

    def _new_runtime_state(self) -> None:
        self._lock = threading.Lock()
        self._parsed: dict[Path, _Parsed] = {}

    def parser(self, path: Path) -> configparser.ConfigParser:
        """A copy of the file's contents (empty if there is no file); ValueError if unreadable."""
        parsed = self._current(path)
        copy = _new_parser()
        if parsed is not None:
            copy.read_dict(parsed.parser)
        return copy

    def profiles(self, path: Path) -> dict[str, Profile]:
        parsed = self._current(path)
        return dict(parsed.profiles) if parsed is not None else {}

    def _current(self, path: Path) -> _Parsed | None:
        """The file as it is now, parsed again only if it changed; None if there is none.
        Whether it may be obeyed is checked every time: a mode can change, not its contents."""
        try:
            info = path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror}") from None
        problem = _distrust(path, info)
        if problem is not None:
            raise ValueError(problem)
        with self._lock:
            parsed = self._parsed.get(path)
        if parsed is None or parsed.version != file_version(info):
            parser, info = _parse(path)
            parsed = _Parsed(file_version(info), parser, _profiles_in(parser))
            with self._lock:
                self._parsed[path] = parsed
        return parsed

    def forget(self, path: Path) -> None:
        with self._lock:
            self._parsed.pop(path, None)


class _Parsed(NamedTuple):
    version: FileVersion
    """The file's identity and change times when it was read."""
    parser: configparser.ConfigParser
    profiles: dict[str, Profile]


def _profiles_in(parser: configparser.ConfigParser) -> dict[str, Profile]:
    return {
        name: Profile(name, *(parser.get(name, field, fallback=None) for field in SETTINGS))
        for name in parser.sections()
    }


def _new_parser() -> configparser.ConfigParser:
    # No section may be the parser's defaults (they would become every profile's): its
    # name is a newline, which no section header can hold.
    return configparser.ConfigParser(interpolation=None, default_section="\n")


def _parse(path: Path) -> tuple[configparser.ConfigParser, os.stat_result]:
    """The file parsed, and its stat as read; ValueError if it cannot be read or obeyed.
    Raised outside any ``except``: a parse error quotes the line, which may hold a key,
    and an exception raised inside one would keep it as its ``__context__``."""
    parser = _new_parser()
    try:
        data, info = read_regular(path, MAX_CONFIG_SIZE, follow_links=True)
    except OSError as exc:
        problem: str | None = f"cannot read {path}: {exc.strerror or type(exc).__name__}"
    else:  # checked again as opened: the file may have been swapped since its stat
        problem = _distrust(path, info) or _read_into(parser, path, data)
    if problem is not None:
        raise ValueError(problem)
    return parser, info


def _read_into(parser: configparser.ConfigParser, path: Path, data: bytes) -> str | None:
    try:
        parser.read_string(data.decode("utf-8"), source=str(path))
    except configparser.Error as exc:
        return f"cannot read {path}: {type(exc).__name__} at line {_line(exc)}"
    except UnicodeDecodeError:
        return f"cannot read {path}: it is not UTF-8 text"
    return None


def _distrust(path: Path, info: os.stat_result) -> str | None:
    """Why the config file or credentials file ``path`` must not be obeyed, if it must not:
    it, or its folder, is another user's or others may write it (as ssh and git refuse
    theirs); credentials others may read. Its folder is looked at each time too."""
    try:
        folder_problem = trust_problem(path.parent, path.parent.stat())
    except OSError as exc:
        return f"cannot read {path.parent}: {exc.strerror}"
    if folder_problem is not None:
        return f"not using the config folder {path.parent}: {folder_problem}"
    problem = trust_problem(path, info, private=path.name == CREDENTIALS_NAME)
    return f"not using {path}: {problem}" if problem is not None else None


def _line(error: configparser.Error) -> object:
    return getattr(error, "lineno", "?")


def _longest_read() -> float:
    """The longest one read of a key source may take (the others wait that long for it)."""
    return max(API_KEY_COMMAND_TIMEOUT + KILL_WAIT, KEYRING_TIMEOUT) + _READ_SLACK


_READ_SLACK = 5.0

_Identity = tuple[str, str, Optional[str], Optional[str]]
"""A key source: the config file, the profile's name, its source and its command."""


class _Keys(RuntimeState):
    """Keys read from sources, remembered per profile and source for the process's life;
    each source read by one thread at a time (the others wait for its answer), and a
    failure remembered for :data:`KEY_SOURCE_RETRY_AFTER` seconds."""

    _runtime_fields = ("_lock", "_known", "_failed", "_reading", "_read_again", "_keyring_call")

    def __init__(self) -> None:
        self._start_runtime()

    def _new_runtime_state(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[_Identity, str | None] = {}
        self._failed: dict[_Identity, tuple[str, float]] = {}
        """Why a source failed, and until when that answer stands (``_clock.now()``)."""
        self._reading: dict[_Identity, threading.Lock] = {}
        """Sources being read, each with a lock its reader holds (a latch for the others)."""
        self._read_again: dict[_Identity, float] = {}
        """When each source read again after a rejection may be read again (``_clock.now()``)."""
        self._keyring_call: BackgroundCall | None = None

    def key(self, profile: Profile) -> str | None:
        identity = _identity(profile)
        deadline = _clock.monotonic() + _longest_read()
        while True:
            with self._lock:
                if identity in self._known:
                    return self._known[identity]
                failure = self._failed.get(identity)
                if failure is not None and failure[1] > _clock.now():
                    raise ApiKeyUnavailableError(failure[0])
                reading = self._reading.get(identity)
                if reading is None:  # this thread reads it
                    reading = self._reading[identity] = threading.Lock()
                    reading.acquire()
                    break
            remaining = deadline - _clock.monotonic()
            if remaining <= 0 or not reading.acquire(timeout=remaining):
                raise ApiKeyUnavailableError(
                    f"profile {profile.name!r}: its key source did not answer another thread"
                    f" within {_longest_read():g} s"
                )
            reading.release()  # read (or failed, or was interrupted): look again
        try:
            return self._read(identity, profile)
        finally:
            with self._lock:
                del self._reading[identity]
            reading.release()

    def _read(self, identity: _Identity, profile: Profile) -> str | None:
        try:
            key = _key_from_source(profile)  # outside the lock: a command may take seconds
        except ApiKeyUnavailableError as exc:
            remembered = (
                f"{exc} (remembered: this process does not ask again for"
                f" {KEY_SOURCE_RETRY_AFTER:g} s)"
            )
            with self._lock:
                self._failed[identity] = (remembered, _clock.now() + KEY_SOURCE_RETRY_AFTER)
            raise
        with self._lock:
            self._known[identity] = key
        return key

    def read_again(self, profile: Profile) -> str | None:
        """The key read from the profile's source again (its key was rejected), at most
        once per :data:`KEY_SOURCE_RETRY_AFTER`; until then, the key it last gave."""
        identity, now = _identity(profile), _clock.now()
        with self._lock:
            if self._read_again.get(identity, 0.0) <= now:
                self._read_again[identity] = now + KEY_SOURCE_RETRY_AFTER
                self._known.pop(identity, None)
                self._failed.pop(identity, None)
        return self.key(profile)

    def forget(self, profile: Profile) -> None:
        with self._lock:
            for remembered in (self._known, self._failed):
                for identity in [i for i in remembered if i[1] == profile.name]:
                    del remembered[identity]

    def ask_keyring(self, function: Callable[[], Any], timeout: float) -> Any:
        """What ``function`` (a keyring call) returned, within ``timeout`` s; else a
        :class:`_KeyringFailure`. One call at a time: while a call the keyring never
        answered is still running, no other starts (no thread piles up behind it)."""
        with self._lock:
            stuck = self._keyring_call is not None and self._keyring_call.running
            if not stuck:
                self._keyring_call = BackgroundCall(function, "requests-opsnow-keyring")
            call = self._keyring_call
        if stuck:
            return _KeyringFailure(
                "the OS keyring has not answered an earlier call yet (is it waiting for"
                " its password?); try again later"
            )
        assert call is not None
        if not call.wait(timeout):
            return _KeyringFailure(
                f"the OS keyring did not answer within {timeout:g} s (is it waiting for its"
                " password?)"
            )
        if call.error is not None:
            return _KeyringFailure(f"the OS keyring failed ({type(call.error).__name__})")
        return call.value


def _identity(profile: Profile) -> _Identity:
    return (str(config_path()), profile.name, profile.api_key_source, profile.api_key_command)


_files = _Files()
_keys = _Keys()
