// The portal's only script: the Stripe.js steps of the payment pages. Everything else
// is server-rendered forms. Loaded (deferred, after Stripe.js) only on the pages that
// need it; the publishable key and client secrets come from data- attributes.
//
//   form#card-setup    mounts Stripe's card element; on submit confirms the SetupIntent
//                      in the browser, then posts the SetupIntent's id to the portal.
//   form#authenticate  runs the card's 3-D Secure step at once, then posts the form
//                      however it ended: the portal asks Stripe for the outcome.
"use strict";

(function () {
  function stripeFor(form) {
    return window.Stripe(form.dataset.publishableKey);
  }

  function setUpCard(form) {
    const stripe = stripeFor(form);
    const card = stripe.elements().create("card");
    card.mount(form.querySelector("#card-element"));
    const errors = form.querySelector("#card-errors");
    const button = form.querySelector("button[type=submit]");
    button.disabled = false;

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      button.disabled = true;
      errors.hidden = true;
      const name = form.querySelector("#cardholder-name").value.trim();
      const details = name ? { name } : {};
      const result = await stripe.confirmCardSetup(form.dataset.clientSecret, {
        payment_method: { card, billing_details: details },
      });
      if (result.error) {
        // textContent: Stripe's message is shown as text, never as markup.
        errors.textContent = result.error.message || "The card could not be saved.";
        errors.hidden = false;
        button.disabled = false;
        return;
      }
      form.elements.setup_intent_id.value = result.setupIntent.id;
      form.submit(); // submit() fires no submit event: this handler does not run again
    });
  }

  async function authenticate(form) {
    const stripe = stripeFor(form);
    // The outcome is not read here: whatever happened (even a throw), the portal asks Stripe.
    try {
      await stripe.confirmCardPayment(form.dataset.clientSecret);
    } finally {
      form.submit();
    }
  }

  const setup = document.getElementById("card-setup");
  if (setup) {
    setUpCard(setup);
  }
  const challenge = document.getElementById("authenticate");
  if (challenge) {
    authenticate(challenge);
  }
})();
