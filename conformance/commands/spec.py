"""``kvspec spec``: print the spec's invariants and profiles."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def run(args: argparse.Namespace) -> int:
    from kvspec.spec.invariants import INVARIANTS
    from kvspec.spec.profiles import PROFILES

    print("Invariants:")
    width = max(len(name) for name in INVARIANTS)
    for name, inv in INVARIANTS.items():
        print(f"  {name:<{width}}  {inv.statement}")
    from kvspec.spec.manager_invariants import MANAGER_INVARIANTS

    print("\nManager invariants:")
    for name, inv in MANAGER_INVARIANTS.items():
        print(f"  {name:<{width}}  {inv.statement}")
    print("\nProfiles:")
    for name, profile in PROFILES.items():
        print(f"  {name:<8}  {profile.summary}")
    return 0
