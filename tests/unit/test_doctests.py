"""The examples in the docstrings run and print what they say."""

import doctest
import importlib

import pytest

WITH_EXAMPLES = ["nequip_spectral.theory.signal", "nequip_spectral.theory.span"]


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0
