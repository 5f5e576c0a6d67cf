//! Plugins: sans-IO behaviours on top of the node (OTA, status reports, user packages), in the
//! way libp2p behaviours sit on a swarm. A plugin sees frames processed locally, connection
//! changes and its own timers, and acts through a [`Context`]; it never touches IO either.

use alloc::vec::Vec;
use bytes::Bytes;
use pmesh_proto::{Envelope, NodeTree, Routing};

use crate::event::{ConnId, Direction};
use crate::node::{Core, PluginSlot, SendError};
use crate::time::Instant;

/// Whether a plugin consumed a frame (if not, the node emits [`crate::Event::Package`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    /// The plugin handled the frame.
    Yes,
    /// Not for this plugin.
    No,
}

/// A frame being processed locally.
#[derive(Clone, Copy, Debug)]
pub struct Incoming<'a> {
    /// Connection it arrived on.
    pub conn: ConnId,
    /// The neighbour on that connection (0 if not yet synced).
    pub neighbour: u32,
    /// The parsed frame.
    pub envelope: &'a Envelope,
    /// The raw frame, NUL included.
    pub raw: &'a Bytes,
}

/// A change of the node's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionChange {
    /// A neighbour completed its first NODE_SYNC.
    New {
        /// Its connection.
        conn: ConnId,
        /// Its id.
        node_id: u32,
    },
    /// A synced neighbour is gone.
    Dropped {
        /// Its former connection.
        conn: ConnId,
        /// Its id.
        node_id: u32,
    },
    /// Some neighbour's tree changed (nodes joined or left somewhere).
    Topology,
}

/// A behaviour driven by the node.
pub trait Plugin {
    /// Events this plugin reports to the application.
    type Event;

    /// A frame of any type other than the core types 3–7 was processed locally (after the
    /// node forwarded it, if it travels further).
    fn on_frame(&mut self, _ctx: &mut Context<'_, Self::Event>, _frame: &Incoming<'_>) -> Handled {
        Handled::No
    }

    /// A frame is about to be forwarded by this node (SINGLE to another node, or BROADCAST):
    /// `false` drops it here, neither forwarded nor processed locally (counted in
    /// `forward_refused`). Lets a plugin check what it relays, e.g. an OTA manifest's
    /// signature before it floods on.
    fn admit(&mut self, _ctx: &mut Context<'_, Self::Event>, _frame: &Incoming<'_>) -> bool {
        true
    }

    /// Connections changed.
    fn on_connection(&mut self, _ctx: &mut Context<'_, Self::Event>, _change: ConnectionChange) {}

    /// Called when [`Plugin::poll_timeout`]'s deadline has passed.
    fn on_timeout(&mut self, _ctx: &mut Context<'_, Self::Event>) {}

    /// The plugin's next deadline.
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// This plugin with its events passed through `f`: how two plugins with different event
    /// types sit side by side (map both into one enum, then pair them).
    fn map_event<F, E>(self, f: F) -> MapEvents<Self, F>
    where
        Self: Sized,
        F: FnMut(Self::Event) -> E,
    {
        MapEvents { inner: self, f }
    }
}

/// The plugin-less node.
impl Plugin for () {
    type Event = core::convert::Infallible;
}

/// Two plugins side by side sharing one event type; both see every frame, the first to
/// handle it wins the "handled" answer.
impl<A, B> Plugin for (A, B)
where
    A: Plugin,
    B: Plugin<Event = A::Event>,
{
    type Event = A::Event;

    fn on_frame(&mut self, ctx: &mut Context<'_, Self::Event>, frame: &Incoming<'_>) -> Handled {
        let a = self.0.on_frame(ctx, frame);
        let b = self.1.on_frame(ctx, frame);
        if a == Handled::Yes || b == Handled::Yes {
            Handled::Yes
        } else {
            Handled::No
        }
    }

    fn admit(&mut self, ctx: &mut Context<'_, Self::Event>, frame: &Incoming<'_>) -> bool {
        self.0.admit(ctx, frame) && self.1.admit(ctx, frame)
    }

    fn on_connection(&mut self, ctx: &mut Context<'_, Self::Event>, change: ConnectionChange) {
        self.0.on_connection(ctx, change);
        self.1.on_connection(ctx, change);
    }

    fn on_timeout(&mut self, ctx: &mut Context<'_, Self::Event>) {
        let now = ctx.now();
        if self.0.poll_timeout().is_some_and(|t| t <= now) {
            self.0.on_timeout(ctx);
        }
        if self.1.poll_timeout().is_some_and(|t| t <= now) {
            self.1.on_timeout(ctx);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        crate::time::earliest(self.0.poll_timeout(), self.1.poll_timeout())
    }
}

/// A plugin that may be absent (configured off): `None` sees nothing and does nothing, so a
/// node's plugin type stays the same whether or not the plugin runs.
impl<P: Plugin> Plugin for Option<P> {
    type Event = P::Event;

    fn on_frame(&mut self, ctx: &mut Context<'_, Self::Event>, frame: &Incoming<'_>) -> Handled {
        self.as_mut()
            .map_or(Handled::No, |p| p.on_frame(ctx, frame))
    }

    fn admit(&mut self, ctx: &mut Context<'_, Self::Event>, frame: &Incoming<'_>) -> bool {
        self.as_mut().is_none_or(|p| p.admit(ctx, frame))
    }

    fn on_connection(&mut self, ctx: &mut Context<'_, Self::Event>, change: ConnectionChange) {
        if let Some(p) = self {
            p.on_connection(ctx, change);
        }
    }

    fn on_timeout(&mut self, ctx: &mut Context<'_, Self::Event>) {
        if let Some(p) = self {
            p.on_timeout(ctx);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.as_ref().and_then(P::poll_timeout)
    }
}

/// A plugin whose events are passed through `f` (see [`Plugin::map_event`]). Everything else
/// (frames, connections, timers, the "handled" answer) goes to the inner plugin unchanged.
#[derive(Clone, Debug)]
pub struct MapEvents<P, F> {
    inner: P,
    f: F,
}

impl<P, F> MapEvents<P, F> {
    /// The inner plugin.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// The inner plugin, mutably (to drive it from [`crate::Node::with_plugin`], use
    /// [`MapEvents::with_inner`], which maps what it emits).
    pub fn inner_mut(&mut self) -> &mut P {
        &mut self.inner
    }

    /// Runs `g` with the inner plugin and a context of the inner plugin's event type, whose
    /// emitted events are mapped on their way out.
    pub fn with_inner<E, R>(
        &mut self,
        ctx: &mut Context<'_, E>,
        g: impl FnOnce(&mut P, &mut Context<'_, P::Event>) -> R,
    ) -> R
    where
        P: Plugin,
        F: FnMut(P::Event) -> E,
    {
        let MapEvents { inner, f } = self;
        let outer = &mut *ctx.emit;
        let mut emit = |e| outer(f(e));
        let mut inner_ctx = Context {
            core: &mut *ctx.core,
            emit: &mut emit,
            now: ctx.now,
        };
        g(inner, &mut inner_ctx)
    }
}

impl<P, F, E> Plugin for MapEvents<P, F>
where
    P: Plugin,
    F: FnMut(P::Event) -> E,
{
    type Event = E;

    fn on_frame(&mut self, ctx: &mut Context<'_, E>, frame: &Incoming<'_>) -> Handled {
        self.with_inner(ctx, |p, ctx| p.on_frame(ctx, frame))
    }

    fn admit(&mut self, ctx: &mut Context<'_, E>, frame: &Incoming<'_>) -> bool {
        self.with_inner(ctx, |p, ctx| p.admit(ctx, frame))
    }

    fn on_connection(&mut self, ctx: &mut Context<'_, E>, change: ConnectionChange) {
        self.with_inner(ctx, |p, ctx| p.on_connection(ctx, change));
    }

    fn on_timeout(&mut self, ctx: &mut Context<'_, E>) {
        self.with_inner(ctx, |p, ctx| p.on_timeout(ctx));
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.inner.poll_timeout()
    }
}

/// A neighbour as plugins see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbour {
    /// Its connection.
    pub conn: ConnId,
    /// Its id (0 until its first NODE_SYNC).
    pub node_id: u32,
    /// Who dialled whom.
    pub direction: Direction,
}

/// What a plugin may do and see while it is called.
///
/// The context is typed by the event type of the plugin it is handed to, not by the node's:
/// [`Context::emit`] goes through `emit`, which [`MapEvents`] wraps with its mapping before
/// it reaches the node's event queue.
pub struct Context<'a, E> {
    pub(crate) core: &'a mut Core,
    pub(crate) emit: &'a mut dyn FnMut(E),
    pub(crate) now: Instant,
}

impl<E> core::fmt::Debug for Context<'_, E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Context")
            .field("node_id", &self.core.cfg.node_id)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

impl<E> Context<'_, E> {
    /// The current time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// This node's id.
    pub fn node_id(&self) -> u32 {
        self.core.cfg.node_id
    }

    /// This node is configured as root.
    pub fn is_root(&self) -> bool {
        self.core.cfg.root
    }

    /// Mesh time now (u32 µs).
    pub fn mesh_time(&self) -> u32 {
        self.core.mesh_time(self.now)
    }

    /// Sends a frame this node originates: SINGLE along the tree to `dest`, BROADCAST to every
    /// synced neighbour, NEIGHBOUR not allowed here (use [`Context::send_to_conn`]).
    pub fn send(&mut self, routing: Routing, dest: u32, json: Vec<u8>) -> Result<(), SendError> {
        self.core.send_frame(routing, dest, json)
    }

    /// Sends a frame to one neighbour connection.
    pub fn send_to_conn(&mut self, conn: ConnId, json: Vec<u8>) -> Result<(), SendError> {
        self.core.send_to_conn(conn, json)
    }

    /// Sends already-framed bytes (NUL included) to one neighbour connection.
    pub fn send_raw_to_conn(&mut self, conn: ConnId, frame: Bytes) -> Result<(), SendError> {
        self.core.send_raw_to_conn(conn, frame)
    }

    /// Synced neighbours, in connection order.
    pub fn neighbours(&self) -> impl Iterator<Item = Neighbour> + '_ {
        self.core.neighbours()
    }

    /// The tree a neighbour last reported.
    pub fn neighbour_tree(&self, conn: ConnId) -> Option<&NodeTree> {
        self.core.conn(conn).map(|c| &c.tree)
    }

    /// The connection leading to `node_id`, if reachable.
    pub fn route(&self, node_id: u32) -> Option<ConnId> {
        self.core.route(node_id)
    }

    /// This node's view of the mesh (`asNodeTree`).
    pub fn tree(&self) -> NodeTree {
        self.core.tree()
    }

    /// Every node reachable, pre-order, optionally with this one first.
    pub fn node_list(&self, include_self: bool) -> Vec<u32> {
        self.core.node_list(include_self)
    }

    /// A pseudo-random number from the node's seeded generator.
    pub fn random(&mut self) -> u64 {
        self.core.rng.next_u64()
    }

    /// Reports an event to the application.
    pub fn emit(&mut self, event: E) {
        // The marker keeps the event's place among the core's events (and counts against
        // `Config::max_queued_events`); the event itself goes to the node's plugin queue.
        self.core.push_event(crate::Event::Plugin(PluginSlot));
        (self.emit)(event);
    }

    /// Largest frame peers accept (the configured cap).
    pub fn max_frame(&self) -> usize {
        self.core.cfg.max_frame
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;
    use alloc::vec::Vec;

    use pmesh_proto::Routing;

    use super::*;
    use crate::{Config, Event, Node, Transmit};

    /// Emits `hello` once at `due`, and the type of each frame of type `ty` it handles;
    /// refuses to forward frames of type `ty + 1`.
    struct Probe<E> {
        ty: i32,
        due: Option<Instant>,
        hello: Option<E>,
    }

    impl<E> Probe<E> {
        fn new(ty: i32, due_s: u64, hello: E) -> Self {
            Probe {
                ty,
                due: Some(Instant::from_micros(due_s * 1_000_000)),
                hello: Some(hello),
            }
        }
    }

    impl<E: From<i32>> Plugin for Probe<E> {
        type Event = E;

        fn on_frame(&mut self, ctx: &mut Context<'_, E>, frame: &Incoming<'_>) -> Handled {
            if frame.envelope.ty != self.ty {
                return Handled::No;
            }
            ctx.emit(E::from(frame.envelope.ty));
            Handled::Yes
        }

        fn admit(&mut self, _ctx: &mut Context<'_, E>, frame: &Incoming<'_>) -> bool {
            frame.envelope.ty != self.ty + 1
        }

        fn on_timeout(&mut self, ctx: &mut Context<'_, E>) {
            self.due = None;
            if let Some(e) = self.hello.take() {
                ctx.emit(e);
            }
        }

        fn poll_timeout(&self) -> Option<Instant> {
            self.due
        }
    }

    /// Two plugins' event types, as an application would combine them.
    #[derive(Clone, Debug, PartialEq)]
    enum Both {
        Left(i64),
        Right(i32),
    }

    fn secs(s: u64) -> Instant {
        Instant::from_micros(s * 1_000_000)
    }

    /// Node 100 (no plugin) and node 200 (`plugin`), connected and synced.
    fn pair<P: Plugin>(plugin: P) -> (Node, Node<P>) {
        let mut a = Node::without_plugins(Config::new(100));
        let mut b = Node::new(Config::new(200), plugin);
        a.handle_connect(ConnId(1), secs(1), crate::Direction::Station);
        b.handle_connect(ConnId(1), secs(1), crate::Direction::Ap);
        pump(&mut a, &mut b, secs(1));
        assert_eq!(b.node_list(false), vec![100], "synced");
        (a, b)
    }

    fn pump<P: Plugin>(a: &mut Node, b: &mut Node<P>, now: Instant) {
        for _ in 0..100 {
            let mut moved = false;
            while let Some(t) = a.poll_transmit() {
                if let Transmit::Send { data, .. } = t {
                    b.handle_bytes(ConnId(1), now, &data);
                    moved = true;
                }
            }
            while let Some(t) = b.poll_transmit() {
                if let Transmit::Send { data, .. } = t {
                    a.handle_bytes(ConnId(1), now, &data);
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Node 100 sends node 200 a frame of type `ty`; node 200's events after it.
    fn frame_to_b<P: Plugin>(a: &mut Node, b: &mut Node<P>, ty: i32) -> Vec<Event<P::Event>> {
        let json = alloc::format!(r#"{{"type":{ty},"dest":200,"from":100,"x":1}}"#);
        while b.poll_event().is_some() {}
        a.send_frame(secs(2), Routing::Single, 200, json.into_bytes())
            .unwrap();
        pump(a, b, secs(2));
        core::iter::from_fn(|| b.poll_event()).collect()
    }

    fn packages<E>(events: &[Event<E>]) -> usize {
        events
            .iter()
            .filter(|e| matches!(e, Event::Package { .. }))
            .count()
    }

    #[test]
    fn none_sees_nothing_and_some_runs_the_plugin() {
        let (mut a, mut b) = pair(None::<Probe<i64>>);
        assert_eq!(b.plugin().poll_timeout(), None);
        let events = frame_to_b(&mut a, &mut b, 300);
        assert_eq!(packages(&events), 1, "unhandled: {events:?}");

        let (mut a, mut b) = pair(Some(Probe::<i64>::new(300, 5, -1)));
        assert_eq!(b.plugin().poll_timeout(), Some(secs(5)));
        let events = frame_to_b(&mut a, &mut b, 300);
        assert_eq!(events, vec![Event::Plugin(300)], "handled by the plugin");
        b.handle_timeout(secs(5));
        assert_eq!(b.poll_event(), Some(Event::Plugin(-1)));
    }

    #[test]
    fn mapped_plugins_with_different_event_types_share_one_enum() {
        let left = Probe::<i64>::new(300, 5, 7).map_event(Both::Left);
        let right = Probe::<i32>::new(301, 6, 9).map_event(Both::Right);
        let (mut a, mut b) = pair((left, right));
        assert_eq!(b.plugin().poll_timeout(), Some(secs(5)), "the earlier one");

        assert_eq!(
            frame_to_b(&mut a, &mut b, 300),
            vec![Event::Plugin(Both::Left(300))]
        );
        assert_eq!(
            frame_to_b(&mut a, &mut b, 301),
            vec![Event::Plugin(Both::Right(301))]
        );
        assert_eq!(packages(&frame_to_b(&mut a, &mut b, 302)), 1, "neither");

        b.handle_timeout(secs(6));
        let events: Vec<_> = core::iter::from_fn(|| b.poll_event()).collect();
        assert_eq!(
            events,
            vec![Event::Plugin(Both::Left(7)), Event::Plugin(Both::Right(9))]
        );

        // Driving the inner plugin from outside maps what it emits too.
        b.with_plugin(secs(7), |(left, _), ctx| {
            left.with_inner(ctx, |_, ctx| ctx.emit(-3))
        });
        assert_eq!(b.poll_event(), Some(Event::Plugin(Both::Left(-3))));
    }

    #[test]
    fn a_full_event_queue_drops_the_oldest_plugin_events_in_order() {
        let mut cfg = Config::new(200);
        cfg.max_queued_events = 3;
        let mut b = Node::new(cfg, Probe::<i64>::new(300, 5, 0).map_event(Both::Left));
        b.with_plugin(secs(1), |p, ctx| {
            p.with_inner(ctx, |_, ctx| (0..5).for_each(|i| ctx.emit(i)))
        });
        let events: Vec<_> = core::iter::from_fn(|| b.poll_event()).collect();
        let kept: Vec<_> = (2..5).map(|i| Event::Plugin(Both::Left(i))).collect();
        assert_eq!(events, kept);
        assert_eq!(b.stats().dropped_events, 2);
    }

    /// Whether node 200's plugin lets a frame of type `ty` from node 100 to node 300 go on.
    fn admits<P: Plugin>(node: &mut Node<P>, ty: i32) -> bool {
        let json = alloc::format!(r#"{{"type":{ty},"dest":300,"from":100}}"#);
        let envelope = pmesh_proto::Envelope::parse(json.as_bytes(), 8).unwrap();
        let raw = Bytes::from(json.into_bytes());
        let frame = Incoming {
            conn: ConnId(1),
            neighbour: 100,
            envelope: &envelope,
            raw: &raw,
        };
        node.with_plugin(secs(1), |p, ctx| p.admit(ctx, &frame))
    }

    #[test]
    fn option_and_map_events_pass_admit_on() {
        let left = Some(Probe::<i64>::new(300, 5, 0)).map_event(Both::Left);
        let right = None::<Probe<i32>>.map_event(Both::Right);
        let mut b = Node::new(Config::new(200), (left, right));
        assert!(!admits(&mut b, 301), "refused by the mapped Some");
        assert!(admits(&mut b, 300));
        assert!(admits(&mut b, 401), "None refuses nothing");
    }
}
