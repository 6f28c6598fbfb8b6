"""Scrapes a Prometheus endpoint and checks it with the Prometheus project's own parsers.

The body is parsed by `prometheus_client.openmetrics.parser` when the server says it is
OpenMetrics (it must then end with `# EOF` and follow that format's rules: `_total` counters,
`_bucket`/`_count`/`_sum` histograms with a `+Inf` bucket, units as suffixes), else by the
classic text-format parser. A body either parser refuses is an error (exit 1).

Prints one JSON object: `content_type`, `families` (a list of [name, type]) and `samples`, a
list of [name, labels, value].

    .deps/venv/bin/python tests/clients/scrape.py http://127.0.0.1:9464/metrics
"""

import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families as classic


def main() -> int:
    url = sys.argv[1]
    with urllib.request.urlopen(url, timeout=10) as r:
        content_type = r.headers.get("Content-Type", "")
        body = r.read().decode("utf-8")
    parse = openmetrics if content_type.startswith("application/openmetrics-text") else classic
    try:
        families = list(parse(body))
    except Exception as e:  # the parser's own words are the point
        print(json.dumps({"error": f"{type(e).__name__}: {e}", "body": body}))
        return 1
    samples = []
    kinds = [[f.name, f.type] for f in families]
    for family in families:
        for s in family.samples:
            samples.append([s.name, dict(s.labels), s.value])
    print(json.dumps({"content_type": content_type, "families": kinds, "samples": samples}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
