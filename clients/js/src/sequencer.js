// In order, once: every channel's notifications (a room's, the user's inbox) delivered in
// offset order and each once, whichever transport brought them and however often the
// connection was replaced. A gap in the offsets is waited out (`gapTimeout`), then handed
// to the client to recover; notifications that arrive while a subscribe or recover is in
// flight are held until its answer says where the channel stands.

import { channelOf } from "./cursor.js";

/** One channel's state: its last delivered position, what is held, and any gap. */
function newChannel() {
  return { pos: null, holding: false, held: [], gap: new Map(), gapTimer: null, late: null };
}

export class Sequencer {
  /**
   * @param {object} hooks
   * @param {{gapTimeout: number, maxHeld: number}} hooks.options
   * @param {() => number} hooks.now
   * @param {(ms: number, f: Function) => unknown} hooks.after a timer the client can cancel on close
   * @param {(timer: unknown) => void} hooks.cancel
   * @param {(note: object) => void} hooks.emit delivers one notification to the app
   * @param {(key: string) => void} hooks.heal a gap did not fill: recover the channel (or call `skipGap`)
   * @param {(detail: object) => void} hooks.recoveryFailed history no longer covers a position
   */
  constructor(hooks) {
    this.hooks = hooks;
    this.channels = new Map();
  }

  channel(key) {
    let ch = this.channels.get(key);
    if (!ch) {
      ch = newChannel();
      this.channels.set(key, ch);
    }
    return ch;
  }

  /** The last delivered position of `key`, or null. */
  position(key) {
    return this.channels.get(key)?.pos ?? null;
  }

  /** Every position held, as [key, position] pairs. */
  positions() {
    return [...this.channels].map(([key, ch]) => [key, ch.pos]).filter(([, p]) => p);
  }

  forget(key) {
    const ch = this.channels.get(key);
    if (ch) this.hooks.cancel(ch.gapTimer);
    this.channels.delete(key);
  }

  /** A subscribe or recover is in flight: notifications wait for its answer. */
  hold(key) {
    this.channel(key).holding = true;
  }

  /** It failed: deliver as before. */
  release(key) {
    this.channel(key).holding = false;
  }

  /** A subscribe or recover answered: where the channel now stands. */
  settle(key, since, reply, what) {
    const ch = this.channel(key);
    ch.holding = false;
    const held = ch.held.sort((a, b) => (a.offset ?? 0) - (b.offset ?? 0));
    ch.held = [];
    const position = reply.offset != null ? { offset: reply.offset, epoch: reply.epoch } : null;
    if (since && reply.recovered) {
      // The missed notifications follow the answer, in order; what came first waits its turn.
      for (const note of held) this.sequence(key, ch, note);
      return;
    }
    if (since && reply.recovered === false) {
      ch.gap.clear();
      this.hooks.recoveryFailed({ ...what, since, position });
    }
    // From now: what arrived before the answer was published after the join, so it is new;
    // so is anything at or below the answer's offset that arrives a little after it (its
    // fan-out raced the answer), once each.
    ch.pos = position;
    ch.late = position ? { upTo: position.offset, epoch: position.epoch, until: this.hooks.now() + this.hooks.options.gapTimeout, seen: new Set() } : null;
    for (const note of held) this.hooks.emit(note);
    for (const note of held) if (note.offset != null && note.offset <= (ch.late?.upTo ?? 0)) ch.late.seen.add(note.offset);
    const last = held.at(-1);
    if (last?.offset != null && (!ch.pos || last.epoch !== ch.pos.epoch || last.offset > ch.pos.offset)) {
      ch.pos = { offset: last.offset, epoch: last.epoch };
    }
  }

  /** A notification at or below a fresh subscribe's offset, arriving just after its answer. */
  lateArrival(ch, note) {
    const late = ch.late;
    if (!late || note.epoch !== late.epoch || note.offset > late.upTo || this.hooks.now() > late.until) return false;
    if (late.seen.has(note.offset)) return false;
    late.seen.add(note.offset);
    return true;
  }

  /** One notification from any transport. */
  deliver(note) {
    const key = channelOf(note);
    if (key == null || note.offset == null) return this.hooks.emit(note);
    const ch = this.channel(key);
    if (ch.holding) return void ch.held.push(note);
    this.sequence(key, ch, note);
  }

  /** Delivers in offset order, each once; waits out a gap, then recovers it. */
  sequence(key, ch, note) {
    const pos = ch.pos;
    if (!pos || note.epoch !== pos.epoch) {
      ch.pos = { offset: note.offset, epoch: note.epoch };
      ch.gap.clear();
      this.hooks.emit(note);
      return this.drain(ch);
    }
    if (note.offset <= pos.offset) {
      if (this.lateArrival(ch, note)) this.hooks.emit(note);
      return; // had it
    }
    if (note.offset === pos.offset + 1) {
      pos.offset = note.offset;
      this.hooks.emit(note);
      return this.drain(ch);
    }
    ch.gap.set(note.offset, note);
    if (ch.gap.size > this.hooks.options.maxHeld) return this.healGap(key, ch);
    if (ch.gapTimer == null) ch.gapTimer = this.hooks.after(this.hooks.options.gapTimeout, () => this.healGap(key, ch));
  }

  drain(ch) {
    for (let next = ch.gap.get(ch.pos.offset + 1); next; next = ch.gap.get(ch.pos.offset + 1)) {
      ch.gap.delete(next.offset);
      ch.pos.offset = next.offset;
      this.hooks.emit(next);
    }
    for (const offset of ch.gap.keys()) if (offset <= ch.pos.offset) ch.gap.delete(offset);
    if (ch.gap.size === 0) {
      this.hooks.cancel(ch.gapTimer);
      ch.gapTimer = null;
    }
  }

  /** A gap that did not fill: the client recovers it (or skips it where none can). */
  healGap(key, ch) {
    this.hooks.cancel(ch.gapTimer);
    ch.gapTimer = null;
    if (ch.gap.size === 0) return;
    this.hooks.heal(key);
  }

  /** A reader's stream is in order per channel: a gap there means history moved on. */
  skipGap(key) {
    const ch = this.channel(key);
    if (ch.gap.size === 0) return;
    const first = Math.min(...ch.gap.keys());
    ch.pos.offset = first - 1;
    this.drain(ch);
  }

  /** A position the server reports (a poll's cursor): taken when it is ahead. */
  advance(key, p) {
    const ch = this.channel(key);
    if (!ch.pos || ch.pos.epoch !== p.epoch || ch.pos.offset < p.offset) ch.pos = p;
  }

  /** History no longer covers the position: start from the server's. The old position. */
  reset(key, position) {
    const ch = this.channel(key);
    const since = ch.pos;
    ch.pos = position;
    ch.gap.clear();
    return since;
  }
}
