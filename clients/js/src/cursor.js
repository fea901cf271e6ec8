// Positions and cursors: the encoding the server gives its SSE ids and poll cursors, and the
// channel key a notification belongs to.

/**
 * A cursor for the fallback transports from the client's positions: the same encoding the
 * server gives its SSE ids and poll cursors (base64url of {"room:NAME":[offset,"epoch"]}).
 */
export function encodeCursor(positions) {
  const pairs = {};
  for (const [key, p] of positions) if (p) pairs[key] = [p.offset, p.epoch];
  const bytes = new TextEncoder().encode(JSON.stringify(pairs));
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** The positions a server cursor names. */
export function decodeCursor(cursor) {
  const text = cursor.replace(/-/g, "+").replace(/_/g, "/");
  const binary = atob(text.padEnd(text.length + ((4 - (text.length % 4)) % 4), "="));
  const pairs = JSON.parse(new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0))));
  return new Map(Object.entries(pairs).map(([key, [offset, epoch]]) => [key, { offset, epoch }]));
}

/** The key of the channel a notification belongs to, as cursors name them. */
export const channelOf = (note) => (note.room != null ? `room:${note.room}` : note.user != null ? `user:${note.user}` : null);

/** What a channel key names: `{room}` or `{user}`. */
export const channelName = (key) => (key.startsWith("room:") ? { room: key.slice(5) } : { user: key.slice(5) });
