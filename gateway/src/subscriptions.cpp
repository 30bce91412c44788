// Subscriptions: the write participant that fills the outbox, the dispatcher that empties it,
// and the backport IG's $status and $events. See subscriptions.hpp for the flow.
#include "yilian/gateway/subscriptions.hpp"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <condition_variable>
#include <iostream>
#include <map>
#include <pqxx/pqxx>
#include <random>
#include <set>
#include <thread>

#include "store_internal.hpp"
#include "yilian/fhir/definitions.hpp"
#include "yilian/fhir/json.hpp"
#include "yilian/gateway/fhir_api.hpp"
#include "yilian/gateway/http_client.hpp"
#include "yilian/gateway/http_server.hpp"
#include "yilian/gateway/operation.hpp"
#include "yilian/gateway/search.hpp"

namespace yilian::gateway {
namespace {

using fhir::issue_type;
using fhir::value;

const char* const event_instant_sql =
    R"(to_char(e.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"+00:00"'))";

std::string text_of(const value* v) { return v && v->is_string() ? v->text() : std::string(); }

std::string field(const pqxx::field& f) { return f.is_null() ? std::string() : std::string(f.c_str(), f.size()); }

[[noreturn]] void reject(std::string diagnostics, std::string location) {
  throw fhir_failure(422, issue_type::invalid, std::move(diagnostics), std::move(location));
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string percent_decode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '+') {
      out.push_back(' ');
    } else if (text[i] == '%' && i + 2 < text.size() && hex_digit(text[i + 1]) >= 0 && hex_digit(text[i + 2]) >= 0) {
      out.push_back(static_cast<char>(hex_digit(text[i + 1]) * 16 + hex_digit(text[i + 2])));
      i += 2;
    } else {
      out.push_back(text[i]);
    }
  }
  return out;
}

std::string random_hex(std::size_t digits) {
  thread_local std::mt19937_64 generator{std::random_device{}()};
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < digits; ++i) out.push_back(hex[generator() & 0xf]);
  return out;
}

std::string uuid_urn() {
  std::string h = random_hex(32);
  h[12] = '4';
  h[16] = "89ab"[hex_digit(h[16]) & 3];
  return "urn:uuid:" + h.substr(0, 8) + "-" + h.substr(8, 4) + "-" + h.substr(12, 4) + "-" + h.substr(16, 4) + "-" +
         h.substr(20);
}

value string_value(std::string text) { return value::make_string(std::move(text)); }

value reference_to(std::string reference) {
  value r = value::make_object();
  r.set("reference", string_value(std::move(reference)));
  return r;
}

value named_parameter(std::string name, std::string value_key, value v) {
  value p = value::make_object();
  p.set("name", string_value(std::move(name)));
  p.set(value_key, std::move(v));
  return p;
}

// ---------------------------------------------------------------------------------------------
// Notification content, shared by the dispatcher and $events.

struct event_row {
  std::int64_t number = 0;
  std::string type;
  std::string id;
  std::int64_t version = 0;
  bool deleted = false;
  std::string timestamp;
  std::string body;  // the version's JSON (full-resource only)
};

struct status_info {
  std::string sub_id;
  std::string status;
  std::string topic;  // topic, else the criteria
  std::int64_t events_since_start = 0;
  std::string error;
};

// The SubscriptionStatus as a Parameters resource (backport-subscription-status-r4).
value status_parameters(const std::string& base, const status_info& s, std::string_view type,
                        const std::vector<event_row>& events, std::string_view content) {
  value p = value::make_object();
  p.set("resourceType", string_value("Parameters"));
  value meta = value::make_object();
  value profiles = value::make_array();
  profiles.push_back(string_value(backport_status_profile));
  meta.set("profile", std::move(profiles));
  p.set("meta", std::move(meta));
  value params = value::make_array();
  params.push_back(named_parameter("subscription", "valueReference", reference_to(base + "/Subscription/" + s.sub_id)));
  params.push_back(named_parameter("topic", "valueCanonical", string_value(s.topic)));
  params.push_back(named_parameter("status", "valueCode", string_value(s.status)));
  params.push_back(named_parameter("type", "valueCode", string_value(std::string(type))));
  params.push_back(named_parameter("events-since-subscription-start", "valueString",
                                   string_value(std::to_string(s.events_since_start))));
  for (const auto& e : events) {
    value event = value::make_object();
    event.set("name", string_value("notification-event"));
    value parts = value::make_array();
    parts.push_back(named_parameter("event-number", "valueString", string_value(std::to_string(e.number))));
    parts.push_back(named_parameter("timestamp", "valueInstant", string_value(e.timestamp)));
    if (content != "empty")
      parts.push_back(named_parameter("focus", "valueReference", reference_to(base + "/" + e.type + "/" + e.id)));
    event.set("part", std::move(parts));
    params.push_back(std::move(event));
  }
  if (!s.error.empty()) {
    value reason = value::make_object();
    reason.set("text", string_value(s.error));
    params.push_back(named_parameter("error", "valueCodeableConcept", std::move(reason)));
  }
  p.set("parameter", std::move(params));
  return p;
}

value bundle_of(std::string_view bundle_type) {
  value b = value::make_object();
  b.set("resourceType", string_value("Bundle"));
  b.set("id", string_value(random_hex(32)));
  b.set("type", string_value(std::string(bundle_type)));
  return b;
}

// A notification Bundle (type history): the status first, then one entry per event unless the
// content is empty.
value notification_bundle(const std::string& base, const status_info& s, std::string_view type,
                          const std::vector<event_row>& events, std::string_view content, std::string_view timestamp) {
  value bundle = bundle_of("history");
  if (!timestamp.empty()) bundle.set("timestamp", string_value(std::string(timestamp)));
  value entries = value::make_array();
  value status_entry = value::make_object();
  status_entry.set("fullUrl", string_value(uuid_urn()));
  status_entry.set("resource", status_parameters(base, s, type, events, content));
  value request = value::make_object();
  request.set("method", string_value("GET"));
  request.set("url", string_value(base + "/Subscription/" + s.sub_id + "/$status"));
  status_entry.set("request", std::move(request));
  value response = value::make_object();
  response.set("status", string_value("200"));
  status_entry.set("response", std::move(response));
  entries.push_back(std::move(status_entry));
  if (content != "empty") {
    for (const auto& e : events) {
      value entry = value::make_object();
      entry.set("fullUrl", string_value(base + "/" + e.type + "/" + e.id));
      if (content == "full-resource" && !e.deleted && !e.body.empty()) entry.set("resource", value::make_raw_json(e.body));
      value req = value::make_object();
      req.set("method", string_value(e.deleted ? "DELETE" : e.version == 1 ? "POST" : "PUT"));
      req.set("url", string_value(e.type + "/" + e.id));
      entry.set("request", std::move(req));
      value res = value::make_object();
      res.set("status", string_value(e.deleted ? "204" : e.version == 1 ? "201" : "200"));
      res.set("etag", string_value("W/\"" + std::to_string(e.version) + "\""));
      entry.set("response", std::move(res));
      entries.push_back(std::move(entry));
    }
  }
  bundle.set("entry", std::move(entries));
  return bundle;
}

std::vector<event_row> read_events(pqxx::transaction_base& tx, const std::string& tenant, const std::string& sub_id,
                                   std::int64_t after, std::int64_t through, std::size_t limit, bool with_bodies) {
  std::string sql = std::string("SELECT e.event_number, e.res_type, e.res_id, e.version, e.deleted, ") +
                    event_instant_sql + ", " + (with_bodies ? "v.body" : "NULL") +
                    " FROM subscription_event e"
                    " LEFT JOIN resource_version v ON $6 AND v.tenant = e.tenant AND v.res_type = e.res_type"
                    " AND v.res_id = e.res_id AND v.version = e.version"
                    " WHERE e.tenant = $1 AND e.sub_id = $2 AND e.event_number > $3 AND e.event_number <= $4"
                    " ORDER BY e.event_number LIMIT $5";
  std::vector<event_row> out;
  for (const auto& row : tx.exec_params(sql, tenant, sub_id, after, through, static_cast<std::int64_t>(limit),
                                        with_bodies)) {
    event_row e;
    e.number = row[0].as<std::int64_t>();
    e.type = field(row[1]);
    e.id = field(row[2]);
    e.version = row[3].as<std::int64_t>();
    e.deleted = row[4].as<bool>();
    e.timestamp = field(row[5]);
    e.body = field(row[6]);
    out.push_back(std::move(e));
  }
  return out;
}

const fhir::value* find_extension(const value* element, std::string_view url) {
  if (!element) return nullptr;
  const value* extensions = element->find("extension");
  if (!extensions || !extensions->is_array()) return nullptr;
  for (const auto& e : extensions->items())
    if (text_of(e.find("url")) == url) return &e;
  return nullptr;
}

std::string join_lines(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) out += (out.empty() ? "" : "\n") + l;
  return out;
}

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start < text.size()) {
    auto end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    out.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

// Set after a transaction recorded an event, read by after_commit on the same thread.
thread_local bool recorded_event = false;

// The PostgreSQL notification channel of commits that recorded events.
const char* const events_channel = "yilian_subscription_events";

}  // namespace

// ---------------------------------------------------------------------------------------------
// Parsing and validation

std::vector<criterion> parse_criteria_query(std::string_view query) {
  std::vector<criterion> out;
  std::size_t start = 0;
  while (start <= query.size()) {
    auto end = query.find('&', start);
    if (end == std::string_view::npos) end = query.size();
    std::string_view pair = query.substr(start, end - start);
    if (!pair.empty()) {
      auto eq = pair.find('=');
      criterion c;
      c.name = percent_decode(pair.substr(0, eq));
      c.value = eq == std::string_view::npos ? std::string() : percent_decode(pair.substr(eq + 1));
      out.push_back(std::move(c));
    }
    start = end + 1;
  }
  return out;
}

subscription_spec parse_subscription(const value& subscription) {
  subscription_spec spec;
  spec.status = text_of(subscription.find("status"));
  const value* channel = subscription.find("channel");
  spec.channel_type = text_of(channel ? channel->find("type") : nullptr);
  if (!spec.delivered()) return spec;

  std::string criteria = text_of(subscription.find("criteria"));
  auto question = criteria.find('?');
  spec.criteria_type = criteria.substr(0, question);
  spec.criteria_query = question == std::string::npos ? std::string() : criteria.substr(question + 1);
  if (!fhir::definitions::r4().is_resource_type(spec.criteria_type))
    reject("Subscription.criteria must be a search of the form Type?query with a known resource type, not '" +
               criteria + "'",
           "Subscription.criteria");
  spec.criteria = parse_criteria_query(spec.criteria_query);
  if (auto unknown = unknown_criteria(spec.criteria_type, spec.criteria); !unknown.empty())
    reject("Subscription.criteria uses '" + unknown.front() + "', which is not a search parameter of " +
               spec.criteria_type,
           "Subscription.criteria");
  try {
    request_context ctx;
    std::vector<std::string> ignored;
    detail::criteria_condition(ctx, spec.criteria_type, spec.criteria, ignored, "c");
  } catch (const store_error& e) {
    reject(std::string("Subscription.criteria: ") + e.what(), "Subscription.criteria");
  }

  spec.endpoint = text_of(channel->find("endpoint"));
  if (spec.channel_type == "rest-hook" && !spec.endpoint.starts_with("http://") && !spec.endpoint.starts_with("https://"))
    reject("A rest-hook Subscription needs an http:// or https:// endpoint", "Subscription.channel.endpoint");
  spec.payload_mime = text_of(channel->find("payload"));
  if (const value* content = find_extension(channel->find("_payload"), backport_payload_content_url)) {
    spec.payload_content = text_of(content->find("valueCode"));
    if (spec.payload_content != "empty" && spec.payload_content != "id-only" && spec.payload_content != "full-resource")
      reject("The payload content must be empty, id-only or full-resource, not '" + spec.payload_content + "'",
             "Subscription.channel.payload.extension");
  } else {
    // R4 without the backport extension: a payload type asks for the resource, none for nothing.
    spec.payload_content = spec.payload_mime.empty() ? "empty" : "full-resource";
  }
  if (!spec.payload_mime.empty() && spec.payload_mime.find("json") == std::string::npos)
    reject("Notifications are sent as JSON: channel.payload must be application/fhir+json, not '" + spec.payload_mime +
               "'",
           "Subscription.channel.payload");
  if (const value* headers = channel->find("header"); headers && headers->is_array()) {
    for (std::size_t i = 0; i < headers->items().size(); ++i) {
      std::string h = text_of(&headers->items()[i]);
      auto colon = h.find(':');
      if (colon == std::string::npos || colon == 0 || h.find_first_of("\r\n") != std::string::npos)
        reject("A channel header must be 'Name: value' on one line", "Subscription.channel.header[" + std::to_string(i) + "]");
      spec.headers.push_back(std::move(h));
    }
  }
  if (const value* heartbeat = find_extension(channel, backport_heartbeat_period_url)) {
    const value* period = heartbeat->find("valueUnsignedInt");
    if (!period || !period->is_number()) reject("The heartbeat period must be a valueUnsignedInt", "Subscription.channel.extension");
    spec.heartbeat_seconds = std::clamp(std::stoi(period->text()), 0, 86'400);
  }
  return spec;
}

// ---------------------------------------------------------------------------------------------
// The participant

namespace {

void forget_subscription(pqxx::transaction_base& tx, const std::string& tenant, const std::string& sub_id) {
  for (const char* table : {"subscription", "subscription_member", "subscription_event", "subscription_delivery"})
    tx.exec_params(std::string("DELETE FROM ") + table + " WHERE tenant = $1 AND sub_id = $2", tenant, sub_id);
}

void sync_subscription(pqxx::transaction_base& tx, const request_context& ctx, const stored_resource& r,
                       const value* content) {
  subscription_spec spec;
  if (content) spec = parse_subscription(*content);
  if (!content || !spec.delivered()) {
    forget_subscription(tx, ctx.tenant, r.id);
    return;
  }
  auto old = tx.exec_params(
      "SELECT criteria_type, criteria_query, status, channel_type, endpoint, headers, payload_mime, payload_content "
      "FROM subscription WHERE tenant = $1 AND sub_id = $2 FOR UPDATE",
      ctx.tenant, r.id);
  std::string headers = join_lines(spec.headers);
  tx.exec_params(
      "INSERT INTO subscription (tenant, sub_id, criteria_type, criteria_query, status, channel_type, endpoint, "
      "payload_mime, payload_content, headers, heartbeat_seconds, topic) "
      "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) "
      "ON CONFLICT (tenant, sub_id) DO UPDATE SET criteria_type = EXCLUDED.criteria_type, "
      "criteria_query = EXCLUDED.criteria_query, status = EXCLUDED.status, channel_type = EXCLUDED.channel_type, "
      "endpoint = EXCLUDED.endpoint, payload_mime = EXCLUDED.payload_mime, payload_content = EXCLUDED.payload_content, "
      "headers = EXCLUDED.headers, heartbeat_seconds = EXCLUDED.heartbeat_seconds, topic = EXCLUDED.topic",
      ctx.tenant, r.id, spec.criteria_type, spec.criteria_query, spec.status, spec.channel_type, spec.endpoint,
      spec.payload_mime, spec.payload_content, headers, spec.heartbeat_seconds, spec.topic);
  tx.exec_params("INSERT INTO subscription_delivery (tenant, sub_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                 ctx.tenant, r.id);
  bool criteria_changed = old.empty() || field(old[0][0]) != spec.criteria_type || field(old[0][1]) != spec.criteria_query;
  if (!old.empty()) {
    // A fixed channel, or a client reactivating a subscription in error, is tried at once.
    bool channel_changed = field(old[0][3]) != spec.channel_type || field(old[0][4]) != spec.endpoint ||
                           field(old[0][5]) != headers || field(old[0][6]) != spec.payload_mime ||
                           field(old[0][7]) != spec.payload_content;
    bool reactivated = field(old[0][2]) == "error" && spec.status != "error";
    if (channel_changed || reactivated)
      tx.exec_params(
          "UPDATE subscription_delivery SET failures = 0, next_attempt_at = now() WHERE tenant = $1 AND sub_id = $2",
          ctx.tenant, r.id);
  }
  if (criteria_changed) {
    tx.exec_params("DELETE FROM subscription_member WHERE tenant = $1 AND sub_id = $2", ctx.tenant, r.id);
    if (!spec.criteria_query.empty()) {
      std::vector<std::string> params{ctx.tenant, r.id, spec.criteria_type};
      std::string sql =
          "INSERT INTO subscription_member (tenant, sub_id, res_type, res_id) SELECT $1, $2, c.res_type, c.res_id "
          "FROM resource_current c WHERE c.tenant = $1 AND c.res_type = $3 AND NOT c.deleted";
      sql += detail::criteria_condition(ctx, spec.criteria_type, spec.criteria, params, "c");
      tx.exec_params(sql, pqxx::prepare::make_dynamic_params(params));
    }
  }
}

// Whether the change of `r` is notified to the subscription (and the membership kept in step).
bool matches(pqxx::transaction_base& tx, const request_context& ctx, const stored_resource& r, const std::string& sub_id,
             const std::string& query) {
  if (query.empty()) return true;
  if (r.deleted)
    return !tx.exec_params(
                  "DELETE FROM subscription_member WHERE tenant = $1 AND sub_id = $2 AND res_type = $3 AND res_id = $4 "
                  "RETURNING 1",
                  ctx.tenant, sub_id, r.type, r.id)
                .empty();
  std::vector<std::string> params{ctx.tenant, r.type, r.id};
  std::string sql = "SELECT 1 FROM resource_current c WHERE c.tenant = $1 AND c.res_type = $2 AND c.res_id = $3";
  sql += detail::criteria_condition(ctx, r.type, parse_criteria_query(query), params, "c");
  bool matched = !tx.exec_params(sql, pqxx::prepare::make_dynamic_params(params)).empty();
  tx.exec_params(matched ? "INSERT INTO subscription_member (tenant, sub_id, res_type, res_id) VALUES ($1, $2, $3, $4) "
                           "ON CONFLICT DO NOTHING"
                         : "DELETE FROM subscription_member WHERE tenant = $1 AND sub_id = $2 AND res_type = $3 "
                           "AND res_id = $4",
                 ctx.tenant, sub_id, r.type, r.id);
  return matched;
}

struct active_subscription {
  std::string sub_id;
  std::string query;
};

// Active subscriptions on `types`, by type, each list sorted by id: concurrent writes lock the
// subscription rows in one order.
std::map<std::string, std::vector<active_subscription>> active_subscriptions(pqxx::transaction_base& tx,
                                                                             const std::string& tenant,
                                                                             const std::set<std::string>& types) {
  std::string array = "{";
  for (const auto& t : types) array += (array.size() > 1 ? "," : "") + ('"' + t + '"');  // resource type names
  array += "}";
  std::map<std::string, std::vector<active_subscription>> out;
  for (const auto& row : tx.exec_params(
           "SELECT criteria_type, sub_id, criteria_query FROM subscription WHERE tenant = $1 "
           "AND criteria_type = ANY($2::text[]) AND status <> 'off' ORDER BY sub_id",
           tenant, array))
    out[field(row[0])].push_back({field(row[1]), field(row[2])});
  return out;
}

bool record_events(pqxx::transaction_base& tx, const request_context& ctx, const stored_resource& r,
                   const std::vector<active_subscription>& subs) {
  bool recorded = false;
  for (const auto& sub : subs) {
    const std::string& sub_id = sub.sub_id;
    bool matched = false;
    try {
      matched = matches(tx, ctx, r, sub_id, sub.query);
    } catch (const store_error& e) {  // validated when stored; only a newer definition set could refuse it
      std::cerr << "subscription " << sub_id << ": criteria no longer understood: " << e.what() << "\n";
      continue;
    }
    if (!matched) continue;
    auto n = tx.exec_params(
        "UPDATE subscription SET events_since_start = events_since_start + 1 WHERE tenant = $1 AND sub_id = $2 "
        "RETURNING events_since_start",
        ctx.tenant, sub_id);
    tx.exec_params(
        "INSERT INTO subscription_event (tenant, sub_id, event_number, res_type, res_id, version, deleted, occurred_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8::timestamptz)",
        ctx.tenant, sub_id, n[0][0].as<std::int64_t>(), r.type, r.id, r.version, r.deleted, r.last_updated);
    recorded = true;
  }
  return recorded;
}

}  // namespace

void subscription_participant::in_transaction(pqxx::transaction_base& tx, const write_event& event) {
  const request_context& ctx = *event.context;
  const stored_resource& r = *event.resource;
  if (r.type == "Subscription") sync_subscription(tx, ctx, r, event.content);
  auto subs = active_subscriptions(tx, ctx.tenant, {r.type});
  if (record_events(tx, ctx, r, subs[r.type])) {
    tx.exec(std::string("NOTIFY ") + events_channel);  // delivered at commit, folded into one per transaction
    recorded_event = true;
  }
}

void subscription_participant::in_transaction_batch(pqxx::transaction_base& tx, const std::vector<write_event>& events) {
  // One look-up for the whole batch (bulk loads mostly find no subscription at all), unless the
  // batch itself changes subscriptions: then each write sees the ones before it.
  std::map<std::string, std::set<std::string>> types_by_tenant;
  for (const auto& e : events) {
    if (e.resource->type == "Subscription") {
      for (const auto& each : events) in_transaction(tx, each);
      return;
    }
    types_by_tenant[e.context->tenant].insert(e.resource->type);
  }
  bool recorded = false;
  for (const auto& [tenant, types] : types_by_tenant) {
    auto subs = active_subscriptions(tx, tenant, types);
    if (subs.empty()) continue;
    for (const auto& e : events)
      if (e.context->tenant == tenant)
        if (auto it = subs.find(e.resource->type); it != subs.end())
          recorded = record_events(tx, *e.context, *e.resource, it->second) || recorded;
  }
  if (recorded) {
    tx.exec(std::string("NOTIFY ") + events_channel);
    recorded_event = true;
  }
}

void subscription_participant::after_commit(const write_event&) noexcept {
  if (!recorded_event) return;
  recorded_event = false;
  std::lock_guard lock(mutex_);
  for (const auto& [id, l] : listeners_) l();
}

std::uint64_t subscription_participant::add_listener(listener l) {
  std::lock_guard lock(mutex_);
  listeners_.emplace_back(++next_listener_, std::move(l));
  return next_listener_;
}

void subscription_participant::remove_listener(std::uint64_t id) {
  std::lock_guard lock(mutex_);
  std::erase_if(listeners_, [&](const auto& entry) { return entry.first == id; });
}

// ---------------------------------------------------------------------------------------------
// The websocket channel

struct subscription_websockets::impl {
  resource_store& store;
  std::mutex mutex;
  std::vector<std::pair<std::string, std::shared_ptr<websocket_connection>>> bindings;
  std::vector<std::pair<std::uint64_t, std::function<void()>>> listeners;
  std::uint64_t next_listener = 0;

  explicit impl(resource_store& s) : store(s) {}

  void message(const std::shared_ptr<websocket_connection>& conn, std::string text) {
    while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
    if (!text.starts_with("bind ")) {
      conn->send("error unknown command (expected: bind <subscription id>)");
      return;
    }
    std::string id = text.substr(5);
    bool known = false;
    {
      auto lease = store.acquire();
      pqxx::read_transaction tx(*lease);
      known = !tx.exec_params("SELECT 1 FROM subscription WHERE tenant = $1 AND sub_id = $2 AND channel_type = 'websocket'",
                              request_context{}.tenant, id)
                   .empty();
    }
    if (!known) {
      conn->send("error " + id + " is not an active websocket Subscription");
      return;
    }
    std::vector<std::function<void()>> to_call;
    {
      std::lock_guard lock(mutex);
      if (std::none_of(bindings.begin(), bindings.end(), [&](const auto& b) { return b.first == id && b.second == conn; }))
        bindings.emplace_back(id, conn);
      for (const auto& [listener_id, l] : listeners) to_call.push_back(l);
    }
    conn->send("bound " + id);
    for (const auto& l : to_call) l();
  }

  void closed(const std::shared_ptr<websocket_connection>& conn) {
    std::lock_guard lock(mutex);
    std::erase_if(bindings, [&](const auto& b) { return b.second == conn; });
  }
};

subscription_websockets::subscription_websockets(resource_store& store) : impl_(std::make_shared<impl>(store)) {}

subscription_websockets::~subscription_websockets() = default;

websocket_endpoint subscription_websockets::endpoint(std::string path) {
  websocket_endpoint e;
  e.path = std::move(path);
  e.on_message = [i = impl_](const std::shared_ptr<websocket_connection>& c, const std::string& m) { i->message(c, m); };
  e.on_close = [i = impl_](const std::shared_ptr<websocket_connection>& c) { i->closed(c); };
  return e;
}

std::vector<std::string> subscription_websockets::bound_ids() {
  std::lock_guard lock(impl_->mutex);
  std::vector<std::string> ids;
  for (const auto& b : impl_->bindings)
    if (std::find(ids.begin(), ids.end(), b.first) == ids.end()) ids.push_back(b.first);
  return ids;
}

std::size_t subscription_websockets::send(const std::string& sub_id, const std::string& text) {
  std::vector<std::shared_ptr<websocket_connection>> targets;
  {
    std::lock_guard lock(impl_->mutex);
    for (const auto& b : impl_->bindings)
      if (b.first == sub_id) targets.push_back(b.second);
  }
  std::size_t sent = 0;
  for (const auto& t : targets) sent += t->send(text) ? 1 : 0;
  return sent;
}

std::uint64_t subscription_websockets::add_bind_listener(std::function<void()> listener) {
  std::lock_guard lock(impl_->mutex);
  impl_->listeners.emplace_back(++impl_->next_listener, std::move(listener));
  return impl_->next_listener;
}

void subscription_websockets::remove_bind_listener(std::uint64_t id) {
  std::lock_guard lock(impl_->mutex);
  std::erase_if(impl_->listeners, [&](const auto& l) { return l.first == id; });
}

// ---------------------------------------------------------------------------------------------
// The dispatcher

struct subscription_dispatcher::impl {
  resource_store& store;
  subscription_dispatcher_options options;
  std::shared_ptr<subscription_participant> participant;
  std::uint64_t listener_id = 0;
  std::shared_ptr<subscription_websockets> websockets;
  std::uint64_t bind_listener_id = 0;

  std::mutex mutex;
  std::condition_variable wake;
  std::uint64_t wakeups = 0;
  bool stopping = false;
  std::vector<std::thread> threads;
  std::thread listener;
  std::chrono::steady_clock::time_point next_prune{};

  struct claim {
    std::string tenant;
    std::string sub_id;
    std::int64_t delivered_through = 0;
    int failures = 0;
    std::string status;
    std::int64_t events_since_start = 0;
    std::string channel_type;
    std::string endpoint;
    std::string payload_mime;
    std::string payload_content;
    std::vector<std::string> headers;
    std::string topic;
    std::vector<event_row> events;
    std::string now;
  };

  impl(resource_store& s, subscription_dispatcher_options o, std::shared_ptr<subscription_participant> p)
      : store(s), options(std::move(o)), participant(std::move(p)) {
    if (options.owner.empty()) {
      char host[256] = {};
      ::gethostname(host, sizeof host - 1);
      options.owner = std::string(host) + ":" + std::to_string(::getpid()) + ":" + random_hex(8);
    }
    if (options.threads == 0) options.threads = 1;
    if (options.max_events_per_notification == 0) options.max_events_per_notification = 1;
    // A claim must outlive the request it covers, or a second process could send concurrently.
    options.lease = std::max(options.lease, options.http_timeout * 2 + std::chrono::seconds(5));
  }

  void notify() {
    {
      std::lock_guard lock(mutex);
      ++wakeups;
    }
    wake.notify_all();
  }

  // Leases one due subscription and reads what to send, in one short transaction.
  std::optional<claim> take_claim() {
    auto lease = store.acquire();
    pqxx::work tx(*lease);
    auto claimed = tx.exec_params(
        "UPDATE subscription_delivery d SET leased_by = $1, leased_until = now() + $2 * interval '1 millisecond' "
        "FROM (SELECT d2.tenant, d2.sub_id FROM subscription_delivery d2 "
        "      JOIN subscription s ON s.tenant = d2.tenant AND s.sub_id = d2.sub_id "
        "      WHERE (s.channel_type = 'rest-hook' OR (s.channel_type = 'websocket' AND s.sub_id = ANY($3::text[]))) "
        "        AND s.status <> 'off' "
        "        AND (d2.leased_until IS NULL OR d2.leased_until < now()) AND d2.next_attempt_at <= now() "
        "        AND (s.events_since_start > d2.delivered_through OR s.status = 'requested' "
        "             OR (s.heartbeat_seconds > 0 AND coalesce(d2.last_sent_at, '-infinity'::timestamptz) "
        "                 + s.heartbeat_seconds * interval '1 second' <= now())) "
        "      ORDER BY d2.next_attempt_at LIMIT 1 FOR UPDATE OF d2 SKIP LOCKED) due "
        "WHERE d.tenant = due.tenant AND d.sub_id = due.sub_id "
        "RETURNING d.tenant, d.sub_id, d.delivered_through, d.failures",
        options.owner, static_cast<std::int64_t>(options.lease.count()), bound_websockets());
    if (claimed.empty()) return std::nullopt;
    claim c;
    c.tenant = field(claimed[0][0]);
    c.sub_id = field(claimed[0][1]);
    c.delivered_through = claimed[0][2].as<std::int64_t>();
    c.failures = claimed[0][3].as<int>();
    auto s = tx.exec_params(
        "SELECT status, events_since_start, endpoint, payload_mime, payload_content, headers, topic, criteria_type, "
        "criteria_query, to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"+00:00\"'), channel_type "
        "FROM subscription WHERE tenant = $1 AND sub_id = $2",
        c.tenant, c.sub_id);
    c.status = field(s[0][0]);
    c.events_since_start = s[0][1].as<std::int64_t>();
    c.endpoint = field(s[0][2]);
    c.payload_mime = field(s[0][3]);
    c.payload_content = field(s[0][4]);
    c.headers = split_lines(field(s[0][5]));
    c.topic = field(s[0][6]);
    if (c.topic.empty()) {
      std::string query = field(s[0][8]);
      c.topic = field(s[0][7]) + (query.empty() ? "" : "?" + query);
    }
    c.now = field(s[0][9]);
    c.channel_type = field(s[0][10]);
    if (c.status != "requested")
      c.events = read_events(tx, c.tenant, c.sub_id, c.delivered_through, c.events_since_start,
                             options.max_events_per_notification, c.payload_content == "full-resource");
    tx.commit();
    return c;
  }

  // The bound websocket subscriptions as a PostgreSQL text[] literal.
  std::string bound_websockets() const {
    std::string array = "{";
    if (websockets)
      for (const auto& id : websockets->bound_ids()) {
        if (array.size() > 1) array += ",";
        array += '"';
        for (char ch : id) {
          if (ch == '"' || ch == '\\') array += '\\';
          array += ch;
        }
        array += '"';
      }
    return array + "}";
  }

  // The websocket channel carries no content: `ping <id>` tells bound clients to query.
  std::string send_websocket(const claim& c, std::int64_t& delivered_through) {
    if (c.status != "requested" && !c.events.empty()) {
      if (!websockets || websockets->send(c.sub_id, "ping " + c.sub_id) == 0)
        return "No websocket client is bound to the subscription";
      delivered_through = c.events.back().number;
    }
    return {};
  }

  // Sends the claim's notification; returns the failure reason, empty on success.
  std::string send(const claim& c, std::int64_t& delivered_through) {
    if (c.channel_type == "websocket") return send_websocket(c, delivered_through);
    status_info s{c.sub_id, c.status, c.topic, c.events_since_start, {}};
    std::string type = "event-notification";
    if (c.status == "requested") {
      type = "handshake";
    } else if (c.events.empty()) {
      type = "heartbeat";
    } else {
      s.events_since_start = c.events.back().number;
    }
    value bundle = notification_bundle(options.base_url, s, type, c.events, c.payload_content, c.now);
    http_client_request request;
    request.url = c.endpoint;
    request.timeout = options.http_timeout;
    request.headers.push_back({"Content-Type", c.payload_mime.empty() ? "application/fhir+json" : c.payload_mime});
    for (const auto& h : c.headers) {
      auto colon = h.find(':');
      std::string v = h.substr(colon + 1);
      v.erase(0, v.find_first_not_of(" \t"));
      request.headers.push_back({h.substr(0, colon), v});
    }
    request.body = fhir::to_json(bundle);
    try {
      http_response response = send_http_request(request);
      if (response.status < 200 || response.status > 299)
        return "The endpoint answered HTTP " + std::to_string(response.status) + " to a " + type;
    } catch (const http_client_error& e) {
      return std::string("No answer from the endpoint: ") + e.what();
    }
    delivered_through = c.events.empty() ? c.delivered_through : c.events.back().number;
    return {};
  }

  std::chrono::milliseconds backoff(int failures) const {
    auto delay = options.retry_min;
    for (int i = 1; i < failures && delay < options.retry_max; ++i) delay *= 2;
    return std::min(delay, options.retry_max);
  }

  // Sets the Subscription resource's status (and error) unless a client changed it meanwhile.
  void set_resource_status(const claim& c, const std::string& status, const std::string& error) {
    request_context ctx;
    ctx.tenant = c.tenant;
    try {
      auto current = store.read(ctx, "Subscription", c.sub_id);
      if (!current || current->deleted) return;
      value resource;
      fhir::issue_list issues;
      if (!fhir::parse_json(current->json, resource, issues)) return;
      if (text_of(resource.find("status")) == status && text_of(resource.find("error")) == error) return;
      resource.set("status", string_value(status));
      if (error.empty())
        resource.erase("error");
      else
        resource.set("error", string_value(error));
      store.update(ctx, "Subscription", c.sub_id, std::move(resource), current->version);
    } catch (const store_error& e) {
      if (e.kind() != store_error_kind::version_conflict) throw;  // changed meanwhile: next attempt decides
    }
  }

  bool deliver_once() {
    prune_if_due();
    auto c = take_claim();
    if (!c) return false;
    std::int64_t delivered_through = c->delivered_through;
    std::string failure = send(*c, delivered_through);
    int failures = 0;
    {
      auto lease = store.acquire();
      pqxx::work tx(*lease);
      if (failure.empty()) {
        tx.exec_params(
            "UPDATE subscription_delivery SET delivered_through = GREATEST(delivered_through, $3), failures = 0, "
            "last_error = NULL, last_sent_at = now(), next_attempt_at = now(), leased_by = NULL, leased_until = NULL "
            "WHERE tenant = $1 AND sub_id = $2 AND leased_by = $4",
            c->tenant, c->sub_id, delivered_through, options.owner);
      } else {
        failures = c->failures + 1;
        tx.exec_params(
            "UPDATE subscription_delivery SET failures = $3, last_error = $4, "
            "next_attempt_at = now() + $5 * interval '1 millisecond', leased_by = NULL, leased_until = NULL "
            "WHERE tenant = $1 AND sub_id = $2 AND leased_by = $6",
            c->tenant, c->sub_id, failures, failure, static_cast<std::int64_t>(backoff(failures).count()),
            options.owner);
      }
      tx.commit();
    }
    if (failure.empty() && c->status != "active")
      set_resource_status(*c, "active", {});
    else if (!failure.empty() && failures >= options.failures_before_error)
      set_resource_status(*c, "error", failure + " (" + std::to_string(failures) + " attempts in a row failed)");
    return true;
  }

  // Deletes delivered events older than the retention.
  void prune_if_due() {
    auto now = std::chrono::steady_clock::now();
    {
      std::lock_guard lock(mutex);
      if (now < next_prune) return;
      next_prune = now + std::chrono::minutes(1);
    }
    auto lease = store.acquire();
    pqxx::work tx(*lease);
    tx.exec_params(
        "DELETE FROM subscription_event e USING subscription_delivery d "
        "WHERE e.tenant = d.tenant AND e.sub_id = d.sub_id AND e.event_number <= d.delivered_through "
        "AND e.occurred_at < now() - $1 * interval '1 second'",
        static_cast<std::int64_t>(options.retention.count()));
    tx.commit();
  }

  void run() {
    std::string last_failure;
    for (;;) {
      std::uint64_t seen = 0;
      {
        std::lock_guard lock(mutex);
        if (stopping) return;
        seen = wakeups;
      }
      bool worked = false;
      auto wait = options.poll_interval;
      try {
        worked = deliver_once();
        last_failure.clear();
      } catch (const std::exception& e) {
        if (last_failure != e.what()) std::cerr << "subscription dispatcher: " << e.what() << "\n";
        last_failure = e.what();
        wait = std::max(wait, std::chrono::milliseconds(1000));
      }
      if (worked) continue;
      std::unique_lock lock(mutex);
      wake.wait_for(lock, wait, [&] { return stopping || wakeups != seen; });
    }
  }

  // LISTENs for commits with events from every process; reconnects after a failure.
  void listen() {
    struct receiver : pqxx::notification_receiver {
      impl& self;
      receiver(pqxx::connection_base& c, impl& i) : pqxx::notification_receiver(c, events_channel), self(i) {}
      void operator()(const std::string&, int) override { self.notify(); }
    };
    std::string last_failure;
    for (;;) {
      try {
        pqxx::connection c(options.listen_database_url);
        receiver r(c, *this);
        last_failure.clear();
        for (;;) {
          {
            std::lock_guard lock(mutex);
            if (stopping) return;
          }
          c.await_notification(0, 200'000);
        }
      } catch (const std::exception& e) {
        if (last_failure != e.what()) std::cerr << "subscription dispatcher: listening: " << e.what() << "\n";
        last_failure = e.what();
      }
      std::unique_lock lock(mutex);
      if (wake.wait_for(lock, std::chrono::seconds(1), [&] { return stopping; })) return;
    }
  }

  void release_leases() {
    auto lease = store.acquire();
    pqxx::work tx(*lease);
    tx.exec_params("UPDATE subscription_delivery SET leased_by = NULL, leased_until = NULL WHERE leased_by = $1",
                   options.owner);
    tx.commit();
  }
};

subscription_dispatcher::subscription_dispatcher(resource_store& store, subscription_dispatcher_options options,
                                                 std::shared_ptr<subscription_participant> participant)
    : impl_(std::make_unique<impl>(store, std::move(options), std::move(participant))) {}

subscription_dispatcher::~subscription_dispatcher() {
  stop();
  if (impl_->websockets) impl_->websockets->remove_bind_listener(impl_->bind_listener_id);
}

void subscription_dispatcher::attach_websockets(std::shared_ptr<subscription_websockets> websockets) {
  impl_->websockets = std::move(websockets);
  impl_->bind_listener_id = impl_->websockets->add_bind_listener([i = impl_.get()] { i->notify(); });
}

void subscription_dispatcher::start() {
  if (!impl_->threads.empty()) return;
  {
    std::lock_guard lock(impl_->mutex);
    impl_->stopping = false;
  }
  if (impl_->participant) impl_->listener_id = impl_->participant->add_listener([i = impl_.get()] { i->notify(); });
  for (unsigned t = 0; t < impl_->options.threads; ++t) impl_->threads.emplace_back([i = impl_.get()] { i->run(); });
  if (!impl_->options.listen_database_url.empty()) impl_->listener = std::thread([i = impl_.get()] { i->listen(); });
}

void subscription_dispatcher::stop() {
  if (impl_->threads.empty()) return;
  {
    std::lock_guard lock(impl_->mutex);
    impl_->stopping = true;
  }
  impl_->wake.notify_all();
  for (auto& t : impl_->threads) t.join();
  impl_->threads.clear();
  if (impl_->listener.joinable()) impl_->listener.join();
  if (impl_->participant) impl_->participant->remove_listener(impl_->listener_id);
  try {
    impl_->release_leases();
  } catch (const std::exception& e) {
    std::cerr << "subscription dispatcher: releasing leases: " << e.what() << "\n";
  }
}

bool subscription_dispatcher::deliver_once() { return impl_->deliver_once(); }

// ---------------------------------------------------------------------------------------------
// $status and $events

namespace {

struct subscription_state {
  status_info status;
  std::string payload_content = "empty";
};

subscription_state state_of(resource_store& store, const operation_call& call) {
  auto current = store.read(call.context, "Subscription", call.id);
  if (!current || current->deleted)
    throw fhir_failure(404, issue_type::not_found, "Subscription/" + call.id + " does not exist");
  subscription_state state;
  state.status.sub_id = call.id;
  auto lease = store.acquire();
  pqxx::read_transaction tx(*lease);
  auto row = tx.exec_params(
      "SELECT s.status, s.events_since_start, s.topic, s.criteria_type, s.criteria_query, s.payload_content, "
      "d.last_error FROM subscription s LEFT JOIN subscription_delivery d ON d.tenant = s.tenant AND d.sub_id = s.sub_id "
      "WHERE s.tenant = $1 AND s.sub_id = $2",
      call.context.tenant, call.id);
  if (row.empty()) {  // off, or a channel this server does not deliver
    value resource;
    fhir::issue_list issues;
    fhir::parse_json(current->json, resource, issues);
    state.status.status = text_of(resource.find("status"));
    state.status.topic = text_of(resource.find("criteria"));
    state.status.error = text_of(resource.find("error"));
    return state;
  }
  state.status.status = field(row[0][0]);
  state.status.events_since_start = row[0][1].as<std::int64_t>();
  state.status.topic = field(row[0][2]);
  if (state.status.topic.empty()) {
    std::string query = field(row[0][4]);
    state.status.topic = field(row[0][3]) + (query.empty() ? "" : "?" + query);
  }
  state.payload_content = field(row[0][5]);
  state.status.error = field(row[0][6]);
  return state;
}

std::int64_t event_number_param(const operation_call& call, std::string_view name, std::int64_t fallback) {
  const std::string* text = call.param(name);
  if (!text) return fallback;
  std::int64_t n = 0;
  auto [end, ec] = std::from_chars(text->data(), text->data() + text->size(), n);
  if (ec != std::errc() || end != text->data() + text->size() || n < 0)
    throw fhir_failure(400, issue_type::invalid, std::string(name) + " must be an event number, not '" + *text + "'");
  return n;
}

}  // namespace

void add_subscription_operations(fhir_api& api, resource_store& store) {
  operation_definition status_op;
  status_op.name = "status";
  status_op.level = operation_level::instance;
  status_op.types = {"Subscription"};
  status_op.definition_url = "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-status";
  status_op.handler = [&store](const operation_call& call) {
    subscription_state state = state_of(store, call);
    value bundle = bundle_of("searchset");
    bundle.set("total", value::make_number("1"));
    value entries = value::make_array();
    value entry = value::make_object();
    entry.set("fullUrl", string_value(uuid_urn()));
    entry.set("resource", status_parameters(call.base_url, state.status, "query-status", {}, "empty"));
    value search = value::make_object();
    search.set("mode", string_value("match"));
    entry.set("search", std::move(search));
    entries.push_back(std::move(entry));
    bundle.set("entry", std::move(entries));
    operation_response response;
    response.resource = std::move(bundle);
    return response;
  };
  api.add_operation(std::move(status_op));

  operation_definition events_op;
  events_op.name = "events";
  events_op.level = operation_level::instance;
  events_op.types = {"Subscription"};
  events_op.definition_url = "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-events";
  events_op.handler = [&store](const operation_call& call) {
    constexpr std::int64_t max_events = 1000;
    subscription_state state = state_of(store, call);
    std::int64_t since = event_number_param(call, "eventsSinceNumber", 1);
    std::int64_t until = event_number_param(call, "eventsUntilNumber", state.status.events_since_start);
    std::string content = state.payload_content;
    if (const std::string* requested = call.param("content")) {
      if (*requested != "empty" && *requested != "id-only" && *requested != "full-resource")
        throw fhir_failure(400, issue_type::invalid, "content must be empty, id-only or full-resource");
      content = *requested;
    }
    std::vector<event_row> events;
    {
      auto lease = store.acquire();
      pqxx::read_transaction tx(*lease);
      events = read_events(tx, call.context.tenant, call.id, std::max<std::int64_t>(since, 1) - 1,
                           std::min(until, state.status.events_since_start), max_events, content == "full-resource");
    }
    operation_response response;
    response.resource = notification_bundle(call.base_url, state.status, "query-event", events, content, {});
    return response;
  };
  api.add_operation(std::move(events_op));
}

}  // namespace yilian::gateway
