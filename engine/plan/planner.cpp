// The planner: schedules live nodes (an update of persistent state runs after every other reader of that
// state), computes each buffer's lifetime, merges views and safe in-place outputs into their input's buffer,
// and places buffers in one arena with a greedy best-fit by size over lifetimes. Then packs gradients into
// buckets.
#include <algorithm>
#include <array>
#include <numeric>
#include <queue>
#include <tuple>

#include "engine/ir/op_schema.h"
#include "engine/ops/shape_slice.h"
#include "engine/plan/program.h"

namespace trainer::engine {

namespace {

size_t align_up(size_t n, size_t a) {
  return (n + a - 1) / a * a;
}

// A topological order of the live nodes; among the nodes ready at each point the lowest key runs first.
// Without gradients to reduce the key is the node id (the order nodes were added). With them (a training
// step whose gradients are summed across replicas in buckets) the key is, in order:
//   1. weight gradients first: a node that produces one of `gradients`, or one of the few nodes that feed
//      only such a node (a weight gradient's GEMM, its operands' casts), runs as soon as its inputs exist, so
//      its bucket's reduction can start while the rest of backward (the input gradients) goes on;
//   2. nodes that read no gradient (forward, loss, backward), by id;
//   3. nodes that read gradients (clipping, the optimizer updates), in the order their gradients were
//      produced, so the updates of the first buckets run while the last bucket is still being reduced.
std::vector<NodeId> schedule(const Graph& g, const std::vector<ValueId>& gradients = {},
                             const std::vector<ValueId>& early = {}) {
  int nn = g.num_nodes();
  std::vector<std::vector<NodeId>> succ(nn);
  std::vector<int> pending(nn, 0);
  auto edge = [&](NodeId from, NodeId to) {
    if (from < 0 || from == to || g.node(from).dead) return;
    succ[from].push_back(to);
    ++pending[to];
  };
  for (NodeId id = 0; id < nn; ++id) {
    const Node& n = g.node(id);
    if (n.dead) continue;
    for (ValueId v : n.inputs)
      if (v != kNoValue) edge(g.value(v).producer, id);
  }
  // The writer of a persistent value's next state waits for every other reader of the old state.
  for (auto [next, state] : g.updates()) {
    NodeId writer = g.value(next).producer;
    TRAINER_ASSERT(writer >= 0, "update '{}' has no producer", g.value(next).name);
    for (NodeId reader : g.value(state).consumers)
      if (reader != writer) edge(reader, writer);
  }
  std::vector<NodeId> nodes;  // the live ones
  for (NodeId id = 0; id < nn; ++id)
    if (!g.node(id).dead) nodes.push_back(id);
  // Kahn's algorithm. `key(id)` is taken when the node becomes ready (every producer of its inputs placed);
  // `placed(id, position)` is told each node as it is placed.
  auto run = [&](auto key, auto placed) {
    std::vector<int> waiting = pending;
    using Entry = std::pair<decltype(key(NodeId{})), NodeId>;
    std::priority_queue<Entry, std::vector<Entry>, std::greater<>> ready;
    for (NodeId id : nodes)
      if (waiting[id] == 0) ready.push({key(id), id});
    std::vector<NodeId> order;
    while (!ready.empty()) {
      const NodeId id = ready.top().second;
      ready.pop();
      placed(id, static_cast<int>(order.size()));
      order.push_back(id);
      for (NodeId s : succ[id])
        if (--waiting[s] == 0) ready.push({key(s), s});
    }
    if (order.size() != nodes.size())
      throw InputError(
          "",
          "the graph cannot be scheduled: it has a cycle, or a state update that must both precede and "
          "follow another node",
          "");
    return order;
  };
  if (gradients.empty()) return run([](NodeId id) { return id; }, [](NodeId, int) {});

  // 1: gradient producers (level 0), the nodes whose results only those read (level 1: a weight gradient's
  // GEMM ahead of its cast to f32), and the nodes that feed only levels 0 and 1 (level 2: the casts of that
  // GEMM's operands); when several are ready, the lower level first. Two levels, not the transitive closure:
  // all of backward ultimately feeds only gradients.
  constexpr int kOther = 3;
  std::vector<int> level(nn, kOther);
  std::vector<char> kept(g.num_values(), 0), is_gradient(g.num_values(), 0);
  for (ValueId v : g.outputs()) kept[v] = 1;
  for (auto [next, state] : g.updates()) kept[next] = 1;
  for (ValueId v : gradients) is_gradient[v] = 1;
  for (ValueId v : early) is_gradient[v] = 1;
  for (NodeId id : nodes)
    for (ValueId v : g.node(id).outputs)
      if (v != kNoValue && is_gradient[v]) level[id] = 0;
  for (int l = 1; l <= 2; ++l) {
    std::vector<int> next = level;
    for (NodeId id : nodes) {
      if (level[id] != kOther) continue;
      bool only_feeds = true, read = false;
      for (ValueId v : g.node(id).outputs) {
        if (v == kNoValue) continue;
        only_feeds = only_feeds && !kept[v];
        for (NodeId c : g.value(v).consumers) {
          if (g.node(c).dead) continue;
          read = true;
          only_feeds = only_feeds && level[c] < l;
        }
      }
      if (read && only_feeds) next[id] = l;
    }
    level = std::move(next);
  }
  // 3: per value, the position of the latest gradient it was computed from (-1: none).
  std::vector<int> gradient_at(g.num_values(), -1);
  auto reads_gradient_from = [&](NodeId id) {
    int at = -1;
    for (ValueId v : g.node(id).inputs)
      if (v != kNoValue) at = std::max(at, gradient_at[v]);
    return at;
  };
  return run(
      [&](NodeId id) {
        return std::tuple<int, int, NodeId>{level[id], reads_gradient_from(id), id};
      },
      [&](NodeId id, int position) {
        const int at = reads_gradient_from(id);
        for (ValueId v : g.node(id).outputs)
          if (v != kNoValue) gradient_at[v] = is_gradient[v] ? position : at;
      });
}

uint64_t fnv1a(uint64_t h, const void* p, size_t n) {
  const auto* b = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ull;
  return h;
}
uint64_t fnv1a(uint64_t h, const std::string& s) {
  return fnv1a(h, s.data(), s.size() + 1);
}

uint64_t signature_of(const Graph& g, const std::vector<NodeId>& order) {
  uint64_t h = 0xcbf29ce484222325ull;
  auto hash_value = [&](ValueId v) {
    if (v == kNoValue) {
      h = fnv1a(h, "-");
      return;
    }
    const Value& val = g.value(v);
    uint8_t d = static_cast<uint8_t>(val.dtype), k = static_cast<uint8_t>(val.kind);
    h = fnv1a(h, &d, 1);
    h = fnv1a(h, &k, 1);
    h = fnv1a(h, val.shape.dims().data(), val.shape.dims().size() * sizeof(int64_t));
  };
  for (NodeId id : order) {
    const Node& n = g.node(id);
    h = fnv1a(h, n.op);
    for (const auto& [k, v] : n.attrs.all()) {
      h = fnv1a(h, k);
      std::visit(
          [&](const auto& x) {
            using T = std::decay_t<decltype(x)>;
            if constexpr (std::is_same_v<T, std::string>)
              h = fnv1a(h, x);
            else if constexpr (std::is_same_v<T, Tensor>)
              h = fnv1a(h, x.raw(), x.nbytes());
            else if constexpr (std::is_same_v<T, int64_t> || std::is_same_v<T, float>)
              h = fnv1a(h, &x, sizeof x);
            else
              h = fnv1a(h, x.data(), x.size() * sizeof(x[0]));
          },
          v);
    }
    for (ValueId v : n.inputs) hash_value(v);
    for (ValueId v : n.outputs) hash_value(v);
  }
  return h;
}

struct UnionFind {
  std::vector<ValueId> p;
  explicit UnionFind(int n) : p(n) { std::iota(p.begin(), p.end(), 0); }
  ValueId find(ValueId x) { return p[x] == x ? x : p[x] = find(p[x]); }
  void unite(ValueId child, ValueId root) { p[find(child)] = find(root); }
};

}  // namespace

Program plan_program(std::shared_ptr<const Graph> graph, const PlanOptions& opt) {
  const Graph& g = *graph;
  Program prog;
  prog.graph = graph;
  prog.alignment = opt.alignment;
  prog.steps = schedule(g, opt.gradients, opt.early);
  const int nv = g.num_values();
  const int end = static_cast<int>(prog.steps.size());
  prog.first_step.assign(nv, -1);
  prog.last_step.assign(nv, -2);  // -2: unused
  std::vector<char> used(nv, 0);
  for (int s = 0; s < end; ++s) {
    const Node& n = g.node(prog.steps[s]);
    for (ValueId v : n.inputs)
      if (v != kNoValue) {
        prog.last_step[v] = std::max(prog.last_step[v], s);
        used[v] = 1;
      }
    for (ValueId v : n.outputs)
      if (v != kNoValue) {
        prog.first_step[v] = s;
        prog.last_step[v] = std::max(prog.last_step[v], s);
        used[v] = 1;
      }
  }
  for (ValueId v : g.outputs()) {
    prog.last_step[v] = end;
    used[v] = 1;
  }
  // The steps of ReplicaMean nodes: each output is a reduction bucket, summed in place while later steps run.
  // One that nothing reads is waited for at the end of the step, and its bytes must live until then.
  std::vector<int> replica_means;
  for (int s = 0; s < end; ++s)
    if (const Node& n = g.node(prog.steps[s]); n.op == "ReplicaMean") {
      replica_means.push_back(s);
      if (g.value(n.outputs[0]).consumers.empty()) prog.last_step[n.outputs[0]] = end;
    }
  for (ValueId v : g.inputs()) used[v] = 1;  // fed every step even when unused
  for (ValueId v = 0; v < nv; ++v) {
    const Value& val = g.value(v);
    if (val.persistent()) {
      used[v] = 1;
      prog.first_step[v] = -1;
      prog.last_step[v] = end;
    }
    // Fed inputs keep their bytes for the whole step and across steps until fed again, so a caller may feed
    // once and run many times (evaluation sweeps, finite differences).
    if (val.kind == ValueKind::input) {
      prog.first_step[v] = -1;
      prog.last_step[v] = end;
    }
  }

  // Buffer sharing: update results share their state's buffer; views and safe in-place outputs share their
  // input's.
  UnionFind uf(nv);
  for (auto [next, state] : g.updates()) uf.unite(next, state);
  auto is_persistent_group = [&](ValueId v) { return g.value(uf.find(v)).persistent(); };
  std::vector<int> group_last(nv), group_first(nv);
  for (ValueId v = 0; v < nv; ++v) {
    group_last[v] = prog.last_step[v];
    group_first[v] = prog.first_step[v];
  }
  auto glast = [&](ValueId v) { return group_last[uf.find(v)]; };
  // Where a value sits in its group's buffer: the value it was merged into and the bytes past that value's
  // start (nonzero only for a contiguous Slice of a vector, a view at an offset). Group roots have none.
  std::vector<std::pair<ValueId, size_t>> placed_in(nv, {kNoValue, 0});
  for (auto [next, state] : g.updates()) placed_in[next] = {state, 0};
  auto merge = [&](ValueId child, ValueId root, size_t displacement = 0) {
    placed_in[child] = {root, displacement};
    ValueId rc = uf.find(child), rr = uf.find(root);
    uf.unite(rc, rr);
    ValueId r = uf.find(rr);
    group_last[r] = std::max(group_last[rc], group_last[rr]);
    group_first[r] = std::min(group_first[rc], group_first[rr]);
  };
  // A gradient to bucket is summed across replicas in place, while backward goes on: as a view it would
  // change bytes that other readers of its group still need, so it is one only where that group dies.
  std::vector<bool> bucketed(nv, false);
  for (ValueId v : opt.gradients) bucketed[v] = true;
  for (int s : replica_means) bucketed[g.node(prog.steps[s]).outputs[0]] = true;
  if (opt.reuse_memory) {
    for (int s = 0; s < end; ++s) {
      const Node& n = g.node(prog.steps[s]);
      auto try_share = [&](std::pair<int, int> pr, bool view) {
        auto [oi, ii] = pr;
        if (oi >= static_cast<int>(n.outputs.size()) || ii >= static_cast<int>(n.inputs.size())) return;
        ValueId out = n.outputs[oi], in = n.inputs[ii];
        if (out == kNoValue || in == kNoValue) return;
        if (uf.find(out) != out) return;  // already bound (an update result)
        const Value& vi = g.value(in);
        if (vi.kind != ValueKind::intermediate || is_persistent_group(in)) return;
        if (g.value(out).nbytes() != vi.nbytes()) return;
        // A graph output must keep its own bytes when the other is overwritten later; views are read-only, so
        // only in-place writes need the input to die here.
        if (!view) {
          if (!opt.inplace || glast(in) != s) return;
          for (size_t k = 0; k < n.inputs.size(); ++k)
            if (static_cast<int>(k) != ii && n.inputs[k] != kNoValue && uf.find(n.inputs[k]) == uf.find(in))
              return;
          for (ValueId o : g.outputs())
            if (uf.find(o) == uf.find(in)) return;
        } else {
          // A view's input must not be overwritten in place while the view lives; in-place writers check that
          // the whole group dies with them, which covers this.
          if (bucketed[out] && glast(in) != s) return;
        }
        merge(out, in);
      };
      if (n.schema->view_pair()) try_share(*n.schema->view_pair(), true);
      if (n.schema->inplace_pair()) try_share(*n.schema->inplace_pair(), false);
      // A contiguous range of a vector (ZeRO-1's gradient ranges): read where it lies, when the offset keeps
      // the backend's alignment.
      if (n.op == "Slice" && n.outputs.size() == 1 && n.outputs[0] != kNoValue) {
        const ValueId out = n.outputs[0], in = n.inputs[0];
        const Value& vi = g.value(in);
        std::array<const Tensor*, 4> consts{};
        std::array<bool, 4> present{};
        for (int k = 0; k < 4; ++k) {
          present[k] = k + 1 < static_cast<int>(n.inputs.size()) && n.inputs[k + 1] != kNoValue;
          consts[k] = present[k] ? g.initializer(n.inputs[k + 1]) : nullptr;
        }
        ops::SliceDims sd;
        if (uf.find(out) == out && vi.kind == ValueKind::intermediate && !is_persistent_group(in) &&
            (!bucketed[out] || glast(in) == s) && vi.shape.rank() == 1 &&
            ops::slice_of_node(vi.shape, n.attrs, consts, present, &sd).empty() && sd.step[0] == 1 &&
            sd.count[0] > 0) {
          const size_t displacement = static_cast<size_t>(sd.start[0]) * dtype_bytes(vi.dtype);
          if (displacement % opt.alignment == 0) merge(out, in, displacement);
        }
      }
    }
  }
  prog.alias_root.resize(nv);
  for (ValueId v = 0; v < nv; ++v) prog.alias_root[v] = uf.find(v);

  // Persistent region: one buffer per persistent group, in value order, or where a shared layout puts it.
  prog.slots.assign(nv, Slot{});
  PersistentLayout local;
  PersistentLayout& layout = opt.layout ? *opt.layout : local;
  for (ValueId v = 0; v < nv; ++v) {
    if (!used[v] || uf.find(v) != v || !g.value(v).persistent()) continue;
    const Value& val = g.value(v);
    size_t b = val.nbytes();
    std::string key = val.kind == ValueKind::constant ? opt.constant_namespace + "\x1f" + val.name : val.name;
    auto it = layout.slots.find(key);
    if (it == layout.slots.end()) {
      it = layout.slots.emplace(key, Slot{layout.bytes, b, true}).first;
      layout.bytes += align_up(std::max<size_t>(b, 1), opt.alignment);
    }
    TRAINER_ASSERT(it->second.bytes == b, "'{}' is {} bytes here and {} in the shared layout", val.name, b,
                   it->second.bytes);
    prog.slots[v] = it->second;
  }
  prog.persistent_bytes = layout.bytes;
  prog.transient_base = std::max(align_up(layout.bytes, opt.alignment), opt.transient_base);

  // Transient region: greedy best-fit by size over lifetime intervals.
  struct Buf {
    ValueId root;
    size_t bytes;
    int first, last;
  };
  std::vector<Buf> bufs;
  size_t naive = prog.persistent_bytes;
  for (ValueId v = 0; v < nv; ++v) {
    if (!used[v]) continue;
    if (!g.value(v).persistent()) naive += align_up(std::max<size_t>(g.value(v).nbytes(), 1), opt.alignment);
    if (uf.find(v) != v || g.value(v).persistent()) continue;
    bufs.push_back({v, align_up(std::max<size_t>(g.value(v).nbytes(), 1), opt.alignment), group_first[v],
                    group_last[v]});
  }
  prog.naive_bytes = naive;
  std::stable_sort(bufs.begin(), bufs.end(), [](const Buf& a, const Buf& b) { return a.bytes > b.bytes; });
  struct Placed {
    size_t off, bytes;
    int first, last;
  };
  std::vector<Placed> placed;
  size_t peak = 0;
  size_t running = 0;
  for (const Buf& b : bufs) {
    size_t at = 0;
    if (opt.reuse_memory) {
      // Collect conflicting intervals sorted by offset and take the lowest gap that fits.
      std::vector<std::pair<size_t, size_t>> busy;
      for (const Placed& p : placed)
        if (!(p.last < b.first || b.last < p.first)) busy.emplace_back(p.off, p.off + p.bytes);
      std::sort(busy.begin(), busy.end());
      size_t best = SIZE_MAX, best_gap = SIZE_MAX, cursor = 0;
      for (auto [s, e] : busy) {
        if (s > cursor && s - cursor >= b.bytes && s - cursor < best_gap) {
          best = cursor;
          best_gap = s - cursor;
        }
        cursor = std::max(cursor, e);
      }
      at = best != SIZE_MAX ? best : cursor;
    } else {
      at = running;
      running += b.bytes;
    }
    placed.push_back({at, b.bytes, b.first, b.last});
    prog.slots[b.root] = Slot{prog.transient_base + at, g.value(b.root).nbytes(), true};
    peak = std::max(peak, at + b.bytes);
  }
  prog.transient_bytes = peak;
  auto displacement = [&](ValueId v) {
    size_t d = 0;
    for (; placed_in[v].first != kNoValue; v = placed_in[v].first) d += placed_in[v].second;
    return d;
  };
  for (ValueId v = 0; v < nv; ++v) {
    if (!used[v] || uf.find(v) == v) continue;
    Slot s = prog.slots[uf.find(v)];
    s.offset += displacement(v);
    s.bytes = g.value(v).nbytes();
    prog.slots[v] = s;
  }

  // Gradient buckets, in the order backward produces the gradients.
  std::vector<int> pos(g.num_nodes(), -1);
  for (int s = 0; s < end; ++s) pos[prog.steps[s]] = s;
  std::vector<ValueId> grads = opt.gradients;
  auto ready_at = [&](ValueId v) {
    NodeId p = g.value(v).producer;
    return p >= 0 ? pos[p] : -1;
  };
  std::stable_sort(grads.begin(), grads.end(),
                   [&](ValueId a, ValueId b) { return ready_at(a) < ready_at(b); });
  for (ValueId v : grads) {
    // The first bucket closes early (at first_bucket_bytes): backward's first gradients then start reducing
    // soon, and a model whose gradients fit one bucket still gets two.
    const size_t cap =
        prog.buckets.size() == 1 ? std::min(opt.bucket_bytes, opt.first_bucket_bytes) : opt.bucket_bytes;
    // Gradients made by one step (a weight's and its bias's) stay together: splitting them would not let
    // either reduction start sooner.
    if (prog.buckets.empty() ||
        (prog.buckets.back().bytes >= cap && ready_at(v) != prog.buckets.back().ready_after_step))
      prog.buckets.emplace_back();
    GradBucket& b = prog.buckets.back();
    b.grads.push_back(v);
    b.bytes += g.value(v).nbytes();
    b.ready_after_step = std::max(b.ready_after_step, ready_at(v));
  }
  // Each ReplicaMean output is a bucket of its own, averaged across the replicas as the gradients are: the
  // statistics of synchronized batch normalization, needed right after they are made.
  for (int s : replica_means) {
    const ValueId out = g.node(prog.steps[s]).outputs[0];
    GradBucket& b = prog.buckets.emplace_back();
    b.grads.push_back(out);
    b.bytes = g.value(out).nbytes();
    b.ready_after_step = s;
  }
  for (GradBucket& b : prog.buckets) {
    b.needed_by_step = end;
    for (ValueId v : b.grads)
      for (NodeId c : g.value(v).consumers)
        if (pos[c] >= 0) b.needed_by_step = std::min(b.needed_by_step, pos[c]);
  }
  prog.signature = signature_of(g, prog.steps);
  return prog;
}

}  // namespace trainer::engine
