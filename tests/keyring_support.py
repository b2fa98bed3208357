"""Real keyring backends for the tests (the machine has no OS keyring).

``MemoryKeyring`` lives in the test process (``keyring.set_keyring``);
``FileKeyring`` is for ``opsnow`` run as a subprocess: the test names it with
``PYTHON_KEYRING_BACKEND=tests.keyring_support.FileKeyring`` and a JSON file
in ``OPSNOW_TEST_KEYRING``, and reads the file afterwards.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from jaraco.classes import properties
from keyring.backend import KeyringBackend
from keyring.errors import KeyringError, PasswordDeleteError


class MemoryKeyring(KeyringBackend):
    @properties.classproperty
    def priority(cls) -> float:  # type: ignore[override]
        # Not viable for keyring's own choice of a backend: only when a test sets it.
        raise RuntimeError("a test backend, used only when chosen explicitly")

    def __init__(self) -> None:
        super().__init__()
        self.passwords: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.passwords.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.passwords[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if self.passwords.pop((service, username), None) is None:
            raise PasswordDeleteError(username)


class FileKeyring(MemoryKeyring):
    """A keyring in a JSON file, so that a test can look into a subprocess's keyring."""

    @properties.classproperty
    def priority(cls) -> float:  # type: ignore[override]
        if "OPSNOW_TEST_KEYRING" not in os.environ:
            raise RuntimeError("a test backend, used only when a test names its file")
        return 1.0

    def __init__(self) -> None:
        super().__init__()
        self.path = Path(os.environ["OPSNOW_TEST_KEYRING"])
        if self.path.exists():
            for entry in json.loads(self.path.read_text()):
                self.passwords[(entry["service"], entry["user"])] = entry["password"]

    def _save(self) -> None:
        entries = [
            {"service": service, "user": user, "password": password}
            for (service, user), password in self.passwords.items()
        ]
        self.path.write_text(json.dumps(entries))

    def set_password(self, service: str, username: str, password: str) -> None:
        super().set_password(service, username, password)
        self._save()

    def delete_password(self, service: str, username: str) -> None:
        super().delete_password(service, username)
        self._save()


class LockedKeyring(FileKeyring):
    """A keyring that refuses to store anything, as a locked one does."""

    def set_password(self, service: str, username: str, password: str) -> None:
        raise KeyringError("the keyring is locked")


class LeakyKeyring(FileKeyring):
    """A keyring whose backend fails with its own exception, quoting a secret."""

    def get_password(self, service: str, username: str) -> str | None:
        raise RuntimeError("backend exploded; secret: hunter2")
