"""The distribution (OCI) registry API: references resolved to manifests, blobs pulled into
the content store and pushed from it, and the credentials of ``~/.docker/config.json``.

Modules: ``transport`` (keep-alive HTTP over ``http.client``; the seam for fault
injection), ``auth`` (challenges, Basic, Bearer tokens), ``config`` (docker config.json and
credential helpers), ``client`` (one registry host: endpoints, retries, redirects,
verification, uploads), ``pull`` and ``push`` (the registry halves of those verbs; the
engine unpacks and records).
"""
