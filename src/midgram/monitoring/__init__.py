"""Monitoring: ``midgram exporter`` (Prometheus) and ``midgram check`` (a health probe).

``scrape`` reads one MI server (OpenSIPS, midgram or Kamailio) group by group; ``naming``
maps its statistics to Prometheus names; ``exposition`` turns a scrape into metric families;
``exporter`` serves them over HTTP; ``thresholds`` and ``check`` are the probe's engine.
The exporter needs ``prometheus_client`` (``pip install 'midgram[exporter]'``); the rest
does not.
"""
