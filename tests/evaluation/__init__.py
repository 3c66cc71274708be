"""Tests of multidgd.evaluation, one file per module."""
