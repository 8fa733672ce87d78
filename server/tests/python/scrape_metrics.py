"""Scrapes a Conclave node's /metrics and parses it with the prometheus_client package's
parsers: the OpenMetrics parser (strict: the format the node serves) and the classic
Prometheus text parser. Prints one JSON object: the Content-Type, every family's type and
every sample as [name, labels, value]. Exits non-zero if either parser refuses the text.

Usage: scrape_metrics.py HOST:PORT
"""

import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_classic


def main() -> None:
    url = f"http://{sys.argv[1]}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        content_type = response.headers.get("Content-Type")
        text = response.read().decode("utf-8")
    families = {}
    samples = []
    for family in parse_openmetrics(text):
        families[family.name] = family.type
        for sample in family.samples:
            samples.append([sample.name, sample.labels, sample.value])
    classic = sum(len(family.samples) for family in parse_classic(text))
    print(json.dumps({"content_type": content_type, "families": families, "samples": samples, "classic_samples": classic}))


if __name__ == "__main__":
    main()
