// Preloaded with `node --require ./fake-clock.cjs`: shifts the client's clock by
// CLOCK_OFFSET_SECONDS (negative: the past), to produce authorizations that are already
// expired when they reach levy.
const offset = Number(process.env.CLOCK_OFFSET_SECONDS || 0) * 1000;
const realNow = Date.now;
Date.now = () => realNow() + offset;
