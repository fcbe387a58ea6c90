// Offers: decisions from the engine rendered into the bank's own markup.
//
//   <div data-rb-slot="hero">
//     <template>
//       <h3 data-rb-text="title"></h3> <p data-rb-text="text"></p>
//       <a data-rb-href="cta_url" data-rb-text="cta_label"></a>
//     </template>
//     (default content, shown until an offer replaces it)
//   </div>
//
// Server data reaches the page only through textContent and a checked href (http or
// https, never javascript:), so an offer can never inject markup. The slot gets
// data-rb-offer="<offer id>" (for styling); each rendered element gets
// data-rb-decision="<decision id>". Impressions and clicks go back as custom events.

import { doc, httpUrl, safe } from './dom.js';

export function renderOffers(decisions, emit) {
  for (const d of decisions) {
    const offer = d.offer;
    const slot = d.action == 'offer' && doc.querySelector(`[data-rb-slot="${d.slot}"]`);
    const tpl = slot && slot.querySelector('template');
    // The offer already on show is not rendered or counted again.
    if (!tpl || slot.dataset.rbOffer == offer.id) continue;
    const data = { decision_id: d.id, offer_id: offer.id };
    const frag = tpl.content.cloneNode(true);
    for (const el of frag.querySelectorAll('[data-rb-text]')) el.textContent = offer[el.dataset.rbText] || '';
    for (const el of frag.querySelectorAll('[data-rb-href]')) el.href = httpUrl(offer[el.dataset.rbHref]) || '#';
    for (const el of frag.children) {
      el.dataset.rbDecision = d.id;
      el.addEventListener('click', safe(() => emit('custom', { name: 'offer_click', data })));
    }
    slot.replaceChildren(tpl, frag);
    slot.dataset.rbOffer = offer.id;
    emit('custom', { name: 'offer_impression', data });
  }
}

