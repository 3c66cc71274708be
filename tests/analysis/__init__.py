"""Tests of :mod:`multidgd.analysis`, one module per source module."""
