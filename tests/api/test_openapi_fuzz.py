"""/openapi.json and the server agree under schemathesis, every check on
(tests/api/openapi_fuzz.py): no 5xx, every answer in its declared shape and
media type, schema-valid requests accepted and schema-violating ones
refused, keys asked for where the spec says, Allow as documented. The
routes that change state run against a server of their own, so that the
first run always finds the same models."""
from __future__ import annotations

from tests.api import openapi_fuzz


def test_every_route_agrees_with_the_spec():
    assert openapi_fuzz.main(state=False) == 0


def test_the_routes_that_change_state_agree_with_the_spec():
    assert openapi_fuzz.main(state=True) == 0
