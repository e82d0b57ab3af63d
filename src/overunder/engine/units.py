"""Human units as the Docker CLI prints them (go-units): sizes in decimal units and
durations like ``About a minute``. Shared by the engine's Docker-shaped JSON rows
(``CreatedSince``, ``Size``) and the CLI's tables."""

from __future__ import annotations


def human_size(n: float) -> str:
    """Decimal units like Docker (``1.98MB``, ``0B``)."""
    units = ["B", "kB", "MB", "GB", "TB", "PB"]
    i = 0
    while n >= 1000 and i < len(units) - 1:
        n /= 1000
        i += 1
    if i == 0:
        return f"{int(n)}B"
    return f"{n:.3g}{units[i]}"


def human_duration(seconds: float) -> str:
    """Docker's go-units HumanDuration: ``Less than a second``, ``2 seconds``,
    ``About a minute``, ``5 minutes``, ``About an hour``, ``3 hours``, ``2 days`` ..."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(s / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"
