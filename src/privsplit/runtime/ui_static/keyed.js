// Keyed per-photo noise, the same construction as the Python client (privsplit.defenses.keyed, docs/keyed_noise.md):
// normals = Box-Muller on 53-bit uniforms from HMAC-SHA256(device_key, SHA-256(uint8 crop) || counter), counter
// mode. The same photo always gets the same noise, so resending it gives the server nothing to average.
// The device key is a non-extractable WebCrypto HMAC key kept in this origin's IndexedDB: page code can use it
// but cannot read its bytes, and it is never sent. Pure functions here (node runs them in the tests too).

const DB = "privsplit", STORE = "keys", KEY_ID = "device_key";
export const KEY_BYTES = 32;

export async function sha256(bytes) { // SHA-256 of the uint8 crop (size x size x 3, HWC, row-major)
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

export async function importKey(raw, extractable = false) { // 32 raw bytes -> HMAC-SHA256 CryptoKey
  if (raw.length !== KEY_BYTES) throw new Error(`the device key must be ${KEY_BYTES} bytes, got ${raw.length}`);
  return crypto.subtle.importKey("raw", raw, { name: "HMAC", hash: "SHA-256" }, extractable, ["sign"]);
}

export async function keyedNormals(key, digest, n) { // the first n standard normals (float64) for this crop hash
  if (digest.length !== 32) throw new Error(`the crop hash must be a 32-byte SHA-256, got ${digest.length} bytes`);
  const blocks = Math.ceil(n / 4), out = new Float64Array(4 * blocks);
  const msg = new Uint8Array(40), counter = new DataView(msg.buffer, 32, 8);
  msg.set(digest);
  const macs = [];
  for (let c = 0; c < blocks; c++) { // counter: 8 bytes big-endian after the digest
    counter.setBigUint64(0, BigInt(c), false);
    macs.push(crypto.subtle.sign("HMAC", key, msg.slice()));
  }
  const p53 = 2 ** -53;
  for (const [c, mac] of (await Promise.all(macs)).entries()) {
    const words = new DataView(mac); // four little-endian uint64: a0 b0 a1 b1
    for (let j = 0; j < 2; j++) {
      const u1 = (Number(words.getBigUint64(16 * j, true) >> 11n) + 1) * p53; // (0, 1]
      const u2 = Number(words.getBigUint64(16 * j + 8, true) >> 11n) * p53; // [0, 1)
      const r = Math.sqrt(-2 * Math.log(u1)), theta = 2 * Math.PI * u2;
      out[4 * c + 2 * j] = r * Math.cos(theta);
      out[4 * c + 2 * j + 1] = r * Math.sin(theta);
    }
  }
  return out.subarray(0, n);
}

function request(req) {
  return new Promise((resolve, reject) => { req.onsuccess = () => resolve(req.result); req.onerror = () => reject(req.error); });
}

let db = null; // one connection per page

async function store(mode) {
  if (!db) {
    const open = indexedDB.open(DB, 1);
    open.onupgradeneeded = () => open.result.createObjectStore(STORE);
    db = request(open);
  }
  return (await db).transaction(STORE, mode).objectStore(STORE);
}

export async function saveDeviceKey(key) { // store a CryptoKey as this browser's device key (platform-injected keys)
  await request((await store("readwrite")).put(key, KEY_ID));
  return key;
}

export async function rotateDeviceKey() { // a new random key (see docs/keyed_noise.md before rotating)
  return saveDeviceKey(await importKey(crypto.getRandomValues(new Uint8Array(KEY_BYTES))));
}

export async function deviceKey() { // this browser's key, created on first use
  if (!crypto.subtle) throw new Error("keyed noise needs WebCrypto: open the page over https or on localhost");
  const key = await request((await store("readonly")).get(KEY_ID));
  if (key) return key;
  const fresh = await importKey(crypto.getRandomValues(new Uint8Array(KEY_BYTES)));
  try { // add, not put: when another tab created one first, keep theirs so both use one key
    await request((await store("readwrite")).add(fresh, KEY_ID));
    return fresh;
  } catch (err) {
    if (err?.name !== "ConstraintError") throw err;
    return request((await store("readonly")).get(KEY_ID));
  }
}
