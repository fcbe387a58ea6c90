/**
 * Ringback browser snippet: public API and wire payload.
 *
 * This file is the browser half of the `POST /v1/events` contract; the server half is
 * `engine/schema.py`. Change both together.
 *
 * Install (the inline stub keeps calls made before the script has loaded):
 *
 *   <script>window.ringback=window.ringback||function(){(ringback.q=ringback.q||[]).push(arguments)}</script>
 *   <script async src="https://engine.bank.example/sdk.js" data-site="demo-bank"
 *           data-consent="required"></script>
 *
 * Script tag attributes:
 *   data-site       site key, as configured on the engine (required)
 *   data-endpoint   engine origin; default: the origin that served sdk.js
 *   data-consent    "required" (default: nothing is stored or sent before consent(true))
 *                   or "implied" (tracking starts at once; consent(false) opts out)
 *   data-honor-gpc  "false" to ignore Global Privacy Control / Do Not Track
 *                   (default: either signal switches Ringback off on that page)
 *
 * Markup the snippet reads:
 *   <form data-rb-calc="mortgage">           a loan calculator (product name)
 *     <input data-rb-field="amount">          amount | term_months | rate | monthly_payment
 *   <div data-rb-slot="hero"><template>       an offer slot and the bank's own template;
 *     <h3 data-rb-text="title"></h3>          fields: title | text | cta_label | id | product
 *     <a data-rb-href="cta_url"></a>          (http/https only)
 *   </template></div>
 *   data-rb-ignore                            on any element: no clicks or form fields
 *                                             inside it are captured
 *
 * Every call is safe: none throws into the page, whatever the network does.
 */

/** Loan-calculator figures; `ringback.calc('mortgage', {amount: 250000, term_months: 300})`. */
export interface CalcValues {
  amount: number;
  term_months: number;
  /** Annual interest rate in percent (0-100). */
  rate?: number;
  monthly_payment?: number;
}

export interface Ringback {
  /** Same as the methods below: `ringback('calc', 'mortgage', {...})`. */
  (method: 'identify' | 'reset' | 'calc' | 'interest' | 'consent' | 'track', ...args: unknown[]): void;

  /**
   * Link this visitor to a bank customer. `token` is a JWT minted by the BANK'S BACKEND
   * (sub = customer id, aud = site key, exp, iat), never built in the browser. It is
   * sent with every following batch; call it on every page load while logged in. A
   * token the engine refuses (expired, wrong site) is dropped and events go on
   * anonymously.
   */
  identify(token: string): void;

  /** Logout: sends what is queued under the old ids, then starts a new anonymous visitor. */
  reset(): void;

  /**
   * Record calculator figures from code (markup calculators are captured automatically).
   * `product`: lower-case letters, digits and `_` (as in the engine's rules).
   */
  calc(product: string, values: CalcValues): void;

  /** Registered interest in a product; `callMe` = the visitor asked to be called back. */
  interest(product: string, callMe?: boolean): void;

  /**
   * Consent from the bank's consent manager; call it on every page load once decided.
   * `false` deletes the queue and ids from this browser and keeps Ringback quiet
   * (also on later page loads) until `consent(true)`.
   */
  consent(granted: boolean): void;

  /** A custom event; `data` holds up to 20 scalar fields. */
  track(name: string, data?: Record<string, string | number | boolean | null>): void;

  /** Set once the snippet has loaded. */
  readonly v?: number;
}

declare global {
  interface Window {
    ringback: Ringback;
  }
}

// ---------------------------------------------------------------------------------
// Wire payload: POST {endpoint}/v1/events, Content-Type text/plain;charset=UTF-8
// (sendBeacon and fetch alike: a CORS "simple" request). At most 100 events / 64 KiB;
// the snippet sends at most 20 per batch.
// ---------------------------------------------------------------------------------

/** One `POST /v1/events` body (`engine.schema.Batch`). */
export interface Batch {
  site: string; // ^[a-z0-9][a-z0-9_-]*$, <= 64
  anonymous_id: string; // ^[A-Za-z0-9_-]{8,64}$, from first-party localStorage
  identity?: string; // the bank-minted JWT passed to identify()
  events: WireEvent[]; // 1-100
  sent_at?: number; // client clock (ms) at send time; the engine shifts each ts by its offset
}

interface EventBase {
  id: string; // ^[A-Za-z0-9_.:-]{1,64}$, client-generated: retries are deduplicated
  ts: number; // ms since the epoch, client clock
  page?: string; // location.pathname only: never a query string or fragment
}

export type WireEvent =
  | (EventBase & { type: 'page_view'; props: PageViewProps })
  | (EventBase & { type: 'click'; props: ClickProps })
  | (EventBase & { type: 'scroll'; props: { depth: 25 | 50 | 75 | 100 } })
  | (EventBase & { type: 'heartbeat'; props: { dwell_ms: number } }) // visible ms since the last one
  | (EventBase & { type: 'calc'; props: CalcProps })
  | (EventBase & { type: 'form'; props: FormProps })
  | (EventBase & { type: 'interest'; props: { product: string; call_me?: boolean } })
  | (EventBase & { type: 'custom'; props: CustomProps });

export interface PageViewProps {
  title?: string; // <= 256
  referrer?: string; // previous path (SPA) or referring URL without query, <= 2048
  utm_source?: string; // campaign parameters, the only part of a query string sent
  utm_medium?: string;
  utm_campaign?: string;
  utm_term?: string;
  utm_content?: string;
}

export interface ClickProps {
  text?: string; // visible text of the link or button, cut to 100 characters
  href?: string; // path (same origin) or origin + path; never query, fragment, tel:, mailto:
  element_id?: string;
}

export interface CalcProps {
  product: string; // ^[a-z][a-z0-9_]*$, <= 32
  amount: number; // 0 - 1e10
  term_months: number; // integer 1 - 600
  rate?: number | null; // 0 - 100; null = not given
  monthly_payment?: number | null;
}

/** Field interaction by name only: there is no place for a value, by design. */
export interface FormProps {
  field: string; // the field's name attribute, <= 64
  action: 'focus' | 'abandon' | 'submit'; // the snippet sends focus and abandon
  form?: string | null; // the form's name or id attribute
}

/**
 * Custom events. The snippet itself sends:
 *   offer_impression / offer_click  {decision_id, offer_id}
 *   rb_dropped                      {count}: events dropped by the bounded offline queue
 *                                   or refused for good by the engine (4xx, see below)
 */
export interface CustomProps {
  name: string; // 1-64
  data?: Record<string, string | number | boolean | null>; // <= 20 fields, strings <= 256
}

/** 200 response. Decisions with action "offer" are rendered into `[data-rb-slot]`. */
export interface EventsResponse {
  accepted: number;
  duplicates: number;
  decisions: Decision[];
}

export interface Decision {
  id: string;
  action: 'offer' | string;
  slot?: string;
  offer?: { id: string; title: string; text: string; cta_url: string; cta_label: string; product?: string };
}

/**
 * Error response (4xx/5xx), with the same CORS headers as a 200 (Retry-After exposed),
 * so the snippet reads it from the bank's origin. 429 and 5xx carry Retry-After
 * (seconds) and are retried with backoff, never sooner; a refused identity
 * (`invalid_identity`, `identity_expired`, `identity_site_mismatch`) is forgotten and
 * the events are resent anonymously; other 4xx are permanent: the batch is dropped and
 * counted in the next `rb_dropped` event.
 */
export interface ErrorResponse {
  error: { code: string; message: string; path?: string };
}
