"""TLS for firmware_py/mqtt.py: a verifying client context on MicroPython's `ssl` and CPython's.

MicroPython's `ssl` (mbedtls; on the unix port a frozen module, so keep ".frozen" in
MICROPYPATH) takes CA certificates as DER only, so a PEM file's first certificate is converted
here. The context requires the broker's certificate to chain to that CA and to match the host
name given to MQTTClient (server_hostname, else host).
"""
import binascii


def tls_context(cafile=None):
    """An SSL context for MQTTClient(ssl=...): CERT_REQUIRED against cafile (PEM or DER)."""
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED  # type: ignore[attr-defined]  # MicroPython: CERT_NONE
    if cafile:
        with open(cafile, "rb") as f:
            data = f.read()
        if data[:5] == b"-----":
            data = pem_to_der(data)
        ctx.load_verify_locations(cadata=data)
    return ctx


def pem_to_der(pem):
    """The DER bytes of the first PEM block in pem (bytes); ValueError when there is none."""
    body = []
    inside = False
    for ln in pem.split(b"\n"):
        ln = ln.strip()
        if ln[:10] == b"-----BEGIN":
            inside = True
        elif ln[:8] == b"-----END":
            break
        elif inside:
            body.append(ln)
    if not body:
        raise ValueError("no PEM block")
    return binascii.a2b_base64(b"".join(body))
