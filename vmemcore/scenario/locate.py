"""Where a key path such as ``memory[1].size`` is written in a scenario's text."""

import re


class Locator:
    """Finds the line of a key path such as ``memory[1].size`` by scanning the scenario text.

    Each part of the path is looked up as ``key =`` in the current table (deeper parts then sit
    in its inline value; ``boot[1]`` there is the line of the array's second inline table), or
    else as the header of a sub-table (``[machine.features]``, the n-th ``[[memory]]``). Falls
    back to the deepest header found.
    """

    _HEADER = re.compile(r"^\s*\[")

    def __init__(self, text):
        self.lines = text.splitlines()
        self._found = {}  # (names, array) -> header line indexes: every step asks, so scan once

    def line(self, path):
        scope, best, names = -1, None, []  # scope: the line index of the current table's header
        for key, index in re.findall(r"([^.\[\]]+)(?:\[(\d+)\])?", path):
            found = None if scope is None else self._key(scope, key)
            if found is not None:
                return found if index == "" else self._item(found - 1, int(index))
            names.append(key)
            headers = self._headers(names, array=True) if index else self._headers(names) or self._headers(names, array=True)
            nth = int(index or 0)
            scope = headers[nth] if nth < len(headers) else None  # None: a table whose header is implicit
            best = best if scope is None else scope
        return None if best is None else best + 1

    def _item(self, start, index):
        """1-based line of inline table ``index`` of the array value that begins on line index ``start``."""
        seen = 0
        for i in range(start, len(self.lines)):
            if i > start and self._HEADER.match(self.lines[i]):
                break
            seen += self.lines[i].count("{")
            if seen > index:
                return i + 1
        return start + 1

    def _headers(self, names, array=False):
        """Line indexes of the ``[a.b]`` (or ``[[a]]``) headers of the dotted table ``names``."""
        key = (tuple(names), array)
        if key not in self._found:
            self._found[key] = self._scan(names, array)
        return self._found[key]

    def _scan(self, names, array):
        dotted = r"\s*\.\s*".join(rf"(\"?){re.escape(n)}\{k + 1}" for k, n in enumerate(names))  # bare or "quoted"
        pattern = rf"^\s*\[\[\s*{dotted}\s*\]\]" if array else rf"^\s*\[\s*{dotted}\s*\](?!\])"
        regex = re.compile(pattern)
        return [i for i, text in enumerate(self.lines) if regex.match(text)]

    def _key(self, scope, key):
        """1-based line of ``key =`` after line index ``scope`` (-1: top) and before the next header."""
        regex = re.compile(rf"^\s*(\"?){re.escape(key)}\1\s*=")
        for i in range(scope + 1, len(self.lines)):
            if self._HEADER.match(self.lines[i]):
                return None
            if regex.match(self.lines[i]):
                return i + 1
        return None
