"""Describe a checkpoint in words (and optionally draw it). Being written."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT")


def main(args: argparse.Namespace) -> int:
    print("streamem inspect: not implemented yet")
    return 1
