"""`/sdk.js` and `/demo`: the browser snippet and the demo bank site.

`GET /sdk.js` serves the committed build `sdk-js/dist/ringback.min.js` (or, installed
from a wheel, a copy packaged as `engine/http/sdk/ringback.min.js`). It is read and gzipped
once at startup, so a request costs no file or CPU work: strong ETag per encoding, 304
on a match, five minutes of public caching (a new snippet reaches every page within
that time), and CORS/CORP headers so banks may load it with Subresource Integrity.

`GET /demo[/{name}]` is a small bank site that embeds the snippet exactly as a bank
would: one script tag whose data-* attributes mirror the demo site's config. Its CSP
allows scripts from this origin plus, by hash, the one inline line of the install
stub. `POST /demo/login` mints an identity token for a demo customer, standing in
for the bank's backend; it exists only for sites marked `demo = true`. A demo customer
logging in for the first time also gets the CRM attributes a bank's feed would load.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import html
import logging
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import orjson
from aiohttp import web

from engine.core.errors import BadRequest, NotFound
from engine.core.settings import SiteConfig
from engine.http.errors import json_response
from engine.http.state import DEMO, PROFILES, SDK, SETTINGS, STORE
from engine.ingest.bodies import read_json_body
from engine.ingest.identity import mint_token
from engine.profile.attributes import CustomerAttributes, store_attributes
from engine.profile.profiles import customer_attributes
from engine.valkey import keys

__all__ = ["SdkAsset", "accepts_gzip", "add_asset_routes", "add_asset_state", "etag_matches"]

log = logging.getLogger("ringback.assets")

# The repository's build first (a checkout always serves what the staleness test
# checked), then a copy packaged into the wheel.
SDK_CANDIDATES = (
    Path(__file__).resolve().parents[2] / "sdk-js" / "dist" / "ringback.min.js",
    Path(__file__).resolve().parent / "sdk" / "ringback.min.js",
)
SDK_CACHE_CONTROL = "public, max-age=300"
DEMO_PAGES = ("", "mortgages", "loans", "cards", "savings")
DEMO_ASSETS = {"demo.js": "application/javascript", "demo.css": "text/css"}
DEMO_TOKEN_TTL_S = 3600
# Demo customers: user name -> (customer id, display name, what the bank's CRM knows).
# Alex agreed to be called (the mortgage calculator leads to a callback); Sam did not
# (the same behaviour gets the offer on the page, or an e-mail, instead). Demo-only ids.
DEMO_CUSTOMERS: dict[str, tuple[str, str, CustomerAttributes]] = {
    "alex": (
        "demo-alex",
        "Alex Morgan",
        CustomerAttributes(products_held=["current_account"], consent_call=True, language="en"),
    ),
    "sam": (
        "demo-sam",
        "Sam Patel",
        CustomerAttributes(products_held=["current_account", "credit_card"], language="en"),
    ),
}


@dataclass(frozen=True, slots=True)
class SdkAsset:
    """The snippet in both encodings, with a strong ETag for each."""

    body: bytes
    gzipped: bytes
    etag: str
    etag_gzip: str

    @classmethod
    def from_bytes(cls, body: bytes) -> SdkAsset:
        """
        >>> a = SdkAsset.from_bytes(b"console.log(1)")
        >>> a.etag != a.etag_gzip and gzip.decompress(a.gzipped) == a.body
        True
        """
        digest = hashlib.sha256(body).hexdigest()[:32]
        # mtime=0: the same build gzips to the same bytes on every worker.
        return cls(body, gzip.compress(body, 9, mtime=0), f'"{digest}"', f'"{digest}-gz"')


def load_sdk() -> SdkAsset | None:
    for path in SDK_CANDIDATES:
        if path.is_file():
            return SdkAsset.from_bytes(path.read_bytes())
    log.warning("snippet build not found (%s): GET /sdk.js answers 404", SDK_CANDIDATES[0])
    return None


def accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding header allows gzip (`q=0` refuses it).

    >>> accepts_gzip("gzip, deflate, br"), accepts_gzip("br;q=1, gzip;q=0"), accepts_gzip("")
    (True, False, False)
    >>> accepts_gzip("*"), accepts_gzip("identity")
    (True, False)
    """
    for part in header.lower().split(","):
        name, _, params = part.strip().partition(";")
        if name.strip() in ("gzip", "*"):
            q = re.search(r"q\s*=\s*([0-9.]+)", params)
            return not q or float(q.group(1)) > 0
    return False


def etag_matches(if_none_match: str, etag: str) -> bool:
    """If-None-Match uses weak comparison: `W/` prefixes are ignored, `*` matches.

    >>> etag_matches('W/"abc", "def"', '"abc"'), etag_matches('"x"', '"abc"')
    (True, False)
    """
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


async def handle_sdk(request: web.Request) -> web.Response:
    sdk = request.app.get(SDK)
    if sdk is None:
        raise NotFound("not_found", "the snippet is not built: run `npm run build` in sdk-js/")
    use_gzip = accepts_gzip(request.headers.get("Accept-Encoding", ""))
    etag = sdk.etag_gzip if use_gzip else sdk.etag
    headers = {
        "ETag": etag,
        "Cache-Control": SDK_CACHE_CONTROL,
        "Vary": "Accept-Encoding",
        "X-Content-Type-Options": "nosniff",
        # Any bank page may load it, also with integrity= and crossorigin= (SRI).
        "Access-Control-Allow-Origin": "*",
        "Cross-Origin-Resource-Policy": "cross-origin",
    }
    if etag_matches(request.headers.get("If-None-Match", ""), etag):
        return web.Response(status=304, headers=headers)
    if use_gzip:
        headers["Content-Encoding"] = "gzip"
    return web.Response(
        body=sdk.gzipped if use_gzip else sdk.body,
        content_type="application/javascript",
        charset="utf-8",
        headers=headers,
    )


# --- the demo bank site ---------------------------------------------------------------

_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


@dataclass(frozen=True, slots=True)
class DemoSite:
    html: bytes
    csp: str
    site: SiteConfig
    assets: dict[str, bytes]  # demo.js, demo.css: read once, like the page


def _static(name: str) -> bytes:
    return resources.files("engine").joinpath(f"http/static/{name}").read_bytes()


def demo_csp(page: str) -> str:
    """The demo page's CSP: this origin only, plus each inline script by its hash.

    >>> demo_csp("<script>var a=1</script>").split("; ")[1]
    "script-src 'self' 'sha256-WazVQOu5lmXfSreSrMJd1CsaQ4c00fUQpJfBYCuMSIw='"
    """
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in _INLINE_SCRIPT.findall(page)
    )
    return (
        f"default-src 'none'; script-src 'self' {hashes}; style-src 'self'; "
        "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    )


def build_demo(sites: dict[str, SiteConfig]) -> DemoSite | None:
    """The demo page for the first demo site, its script tag mirroring the site config."""
    site = next((s for s in sites.values() if s.demo), None)
    if site is None:
        return None
    page = _static("demo.html").decode()
    for name, value in (
        ("site", site.key),
        ("consent", site.consent),
        ("honor_gpc", "true" if site.honor_gpc else "false"),
    ):
        page = page.replace("{{" + name + "}}", html.escape(value))
    assets = {name: _static(name) for name in DEMO_ASSETS}
    return DemoSite(page.encode(), demo_csp(page), site, assets)


def _demo(request: web.Request) -> DemoSite:
    demo = request.app.get(DEMO)
    if demo is None:
        raise NotFound("not_found", "no demo site is configured")
    return demo


def _page_headers(csp: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "strict-origin-when-cross-origin",
        "Cache-Control": "no-cache",
    }


async def handle_demo_page(request: web.Request) -> web.Response:
    """`/demo` and `/demo/{name}`: a page of the demo site, or its script or styles.

    Every page is the same document (a small single-page app), so deep links and
    reloads of `/demo/mortgages` work and route changes are SPA page views.
    """
    demo = _demo(request)
    name = request.match_info.get("name", "")
    if name in DEMO_ASSETS:
        return web.Response(
            body=demo.assets[name],
            content_type=DEMO_ASSETS[name],
            headers=_page_headers("default-src 'none'"),
        )
    if name not in DEMO_PAGES:
        raise NotFound("not_found", "no such demo page")
    return web.Response(
        body=demo.html, content_type="text/html", charset="utf-8", headers=_page_headers(demo.csp)
    )


async def handle_demo_login(request: web.Request) -> web.Response:
    """`POST /demo/login {"user": "alex"}`: what a bank's backend does after its login.

    The token is minted server-side with the site's secret; the browser only carries
    it. Any password is fine (this is a demo, and the snippet never sees it). Demo
    sites only: anywhere else this route does not exist (404).
    """
    demo = request.app.get(DEMO)
    secret = demo.site.identity_secret if demo else None
    if demo is None or secret is None:
        raise NotFound("not_found", "demo login exists only for demo sites")
    try:
        body = orjson.loads(
            await read_json_body(request, request.app[SETTINGS].limits.max_body_bytes)
        )
        user = str(body["user"]).lower()
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise BadRequest("invalid_json", 'send {"user": "alex"}', "$.user") from exc
    if user not in DEMO_CUSTOMERS:
        raise BadRequest(
            "unknown_user", f"demo users are {', '.join(sorted(DEMO_CUSTOMERS))}", "$.user"
        )
    customer_id, name, crm = DEMO_CUSTOMERS[user]
    # What the bank's CRM feed would have loaded, unless someone set attributes already.
    fields, _, _, _ = await request.app[PROFILES].read(keys.customer_prefix(customer_id))
    if not customer_attributes(fields):
        await store_attributes(request.app[STORE], customer_id, crm)
    token = mint_token(secret, demo.site.key, customer_id, ttl_s=DEMO_TOKEN_TTL_S)
    return json_response(
        {
            "token": token,
            "customer_id": customer_id,
            "name": name,
            "expires_in_s": DEMO_TOKEN_TTL_S,
        },
        headers={"Cache-Control": "no-store"},
    )


def add_asset_state(app: web.Application) -> None:
    """Read the snippet and build the demo site once. Call it after `app[SETTINGS]` is
    set (without settings there is no demo site)."""
    sdk = load_sdk()
    if sdk is not None:
        app[SDK] = sdk
    settings = app.get(SETTINGS)
    demo = build_demo(settings.sites) if settings is not None else None
    if demo is not None:
        app[DEMO] = demo


def add_asset_routes(app: web.Application) -> None:
    """Register `/sdk.js` and the demo site (the engine registers them from its route
    table instead; this serves the assets alone, e.g. in tests)."""
    add_asset_state(app)
    r = app.router
    r.add_get("/sdk.js", handle_sdk)
    r.add_get("/demo", handle_demo_page)
    r.add_get("/demo/{name}", handle_demo_page)
    r.add_post("/demo/login", handle_demo_login)
