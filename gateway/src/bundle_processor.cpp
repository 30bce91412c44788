#include "bundle_processor.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <map>
#include <pqxx/except>
#include <set>

#include "yilian/fhir/json.hpp"
#include "yilian/gateway/operation.hpp"

namespace yilian::gateway::detail {
namespace {

using fhir::issue_type;
using fhir::value;

constexpr int max_transaction_attempts = 3;  // whole-bundle retries on write conflicts

const char* reason_phrase(int status) {
  switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 412: return "Precondition Failed";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Entity";
    default: return status < 400 ? "OK" : "Error";
  }
}

std::string text_of(const value* v) { return v && v->is_string() ? v->text() : std::string(); }

// One entry of the request Bundle, parsed.
struct planned_entry {
  std::size_t index = 0;  // position in Bundle.entry
  std::string method;
  std::string url;        // as given, leading '/' removed
  std::string type;       // first path segment
  std::string id;         // second path segment ("" for type-level)
  std::string query;      // after '?'
  std::string full_url;
  value* resource = nullptr;
  const value* request = nullptr;
  // Transaction planning:
  std::string target_id;       // POST/PUT: the id written (assigned, matched or given)
  bool matched_existing = false;  // conditional create found its resource: nothing to write
  std::string existing_location;
};

std::string where(const planned_entry& e) {
  return "Bundle.entry[" + std::to_string(e.index) + "]";
}

[[noreturn]] void entry_failure(const planned_entry& e, int status, issue_type type, const std::string& message,
                                const std::string& sub_location = {}) {
  throw fhir_failure(status, type, where(e) + " (" + e.method + " " + e.url + "): " + message,
                     where(e) + sub_location);
}

int method_rank(const std::string& m) {  // FHIR R4 transaction processing order
  if (m == "DELETE") return 0;
  if (m == "POST") return 1;
  if (m == "PUT" || m == "PATCH") return 2;
  return 3;  // GET, HEAD
}

std::vector<planned_entry> plan_entries(value& bundle, const bundle_options& options, bool transaction) {
  std::vector<planned_entry> out;
  value* entries = bundle.find("entry");
  if (!entries || !entries->is_array()) return out;
  if (entries->items().size() > options.max_entries)
    throw fhir_failure(413, issue_type::too_costly,
                       "The Bundle has " + std::to_string(entries->items().size()) + " entries; this server takes at most " +
                           std::to_string(options.max_entries) + " per Bundle (setting --max-bundle-entries)",
                       "Bundle.entry");
  std::set<std::string> written;  // Type/id of writes: a transaction may touch a resource once
  for (std::size_t i = 0; i < entries->items().size(); ++i) {
    value& entry = entries->items()[i];
    planned_entry e;
    e.index = i;
    e.full_url = text_of(entry.find("fullUrl"));
    e.request = entry.find("request");
    e.resource = entry.find("resource");
    if (!e.request || !e.request->is_object())
      throw fhir_failure(400, issue_type::required, where(e) + " has no request (method and url)", where(e) + ".request");
    e.method = text_of(e.request->find("method"));
    e.url = text_of(e.request->find("url"));
    if (e.method.empty() || e.url.empty())
      throw fhir_failure(400, issue_type::required, where(e) + ".request needs method and url", where(e) + ".request");
    if (e.url.substr(0, e.url.find('?')).find("://") != std::string::npos)
      throw fhir_failure(400, issue_type::not_supported,
                         where(e) + ".request.url must be relative to this server ('" + e.url + "')",
                         where(e) + ".request.url");
    while (!e.url.empty() && e.url.front() == '/') e.url.erase(0, 1);
    std::string path = e.url.substr(0, e.url.find('?'));
    if (auto q = e.url.find('?'); q != std::string::npos) e.query = e.url.substr(q + 1);
    auto slash = path.find('/');
    e.type = path.substr(0, slash);
    if (slash != std::string::npos) {
      std::string rest = path.substr(slash + 1);
      e.id = rest.substr(0, rest.find('/'));
    }
    bool needs_body = e.method == "POST" || e.method == "PUT" || e.method == "PATCH";
    if (needs_body && (!e.resource || !e.resource->is_object()))
      throw fhir_failure(400, issue_type::required, where(e) + " (" + e.method + ") needs a resource",
                         where(e) + ".resource");
    if ((e.method == "POST" || e.method == "PUT") && e.resource) {
      std::string rt = text_of(e.resource->find("resourceType"));
      if (rt != e.type)
        throw fhir_failure(400, issue_type::invalid,
                           where(e) + ": the resource is a " + rt + " but the request url names " + e.type,
                           where(e) + ".resource");
    }
    if (transaction && (e.method == "PUT" || e.method == "DELETE" || e.method == "PATCH") && !e.id.empty()) {
      if (!written.insert(e.type + "/" + e.id).second)
        throw fhir_failure(400, issue_type::invalid,
                           where(e) + " changes " + e.type + "/" + e.id +
                               " a second time; a transaction may change each resource only once",
                           where(e) + ".request.url");
    }
    out.push_back(std::move(e));
  }
  return out;
}

bool is_bundle_local(const std::string& ref) { return ref.starts_with("urn:uuid:") || ref.starts_with("urn:oid:"); }

// Replaces references to other entries (by fullUrl) with the ids the server gives them, in
// Reference.reference and in narrative links. Unknown urn: references fail.
void rewrite_references(value& v, const std::map<std::string, std::string>& ids, const planned_entry& owner,
                        const std::string& path) {
  if (v.is_object()) {
    for (auto& m : v.members()) {
      if (m.val.is_string()) {
        if (m.name == "reference") {
          const std::string& ref = m.val.text();
          if (auto it = ids.find(ref); it != ids.end()) {
            m.val = value::make_string(it->second);
          } else if (is_bundle_local(ref)) {
            entry_failure(owner, 400, issue_type::not_found,
                          "the reference '" + ref + "' names no entry of this Bundle", path + "." + m.name);
          }
        } else if (m.name == "div" && m.val.text().find("urn:") != std::string::npos) {
          std::string div = m.val.text();
          for (const auto& [from, to] : ids) {
            if (!is_bundle_local(from)) continue;
            for (auto at = div.find(from); at != std::string::npos; at = div.find(from, at + to.size()))
              div.replace(at, from.size(), to);
          }
          m.val = value::make_string(std::move(div));
        }
      } else {
        rewrite_references(m.val, ids, owner, path + "." + m.name);
      }
    }
  } else if (v.is_array()) {
    for (std::size_t i = 0; i < v.items().size(); ++i)
      rewrite_references(v.items()[i], ids, owner, path + "[" + std::to_string(i) + "]");
  }
}

// Conditional references ("Patient?identifier=x|1") become "Patient/<id>" when exactly one
// resource matches, as seen by the entry's context (earlier entries of a transaction included).
void resolve_conditional_references(value& v, const planned_entry& owner, const bundle_host& host,
                                    const request_context& ctx, const std::string& path) {
  if (v.is_object()) {
    for (auto& m : v.members()) {
      if (m.name == "reference" && m.val.is_string()) {
        const std::string& ref = m.val.text();
        auto q = ref.find('?');
        if (q == std::string::npos || ref.substr(0, q).find("://") != std::string::npos || ref.starts_with("#"))
          continue;
        std::string type = ref.substr(0, q);
        auto ids = host.find(ctx, type, ref.substr(q + 1), 2);
        if (ids.size() != 1)
          entry_failure(owner, 412, ids.empty() ? issue_type::not_found : issue_type::multiple_matches,
                        "the conditional reference '" + ref + "' matches " +
                            (ids.empty() ? std::string("no resource") : std::string("more than one resource")),
                        path + "." + m.name);
        m.val = value::make_string(type + "/" + ids[0]);
      } else if (!m.val.is_string()) {
        resolve_conditional_references(m.val, owner, host, ctx, path + "." + m.name);
      }
    }
  } else if (v.is_array()) {
    for (std::size_t i = 0; i < v.items().size(); ++i)
      resolve_conditional_references(v.items()[i], owner, host, ctx, path + "[" + std::to_string(i) + "]");
  }
}

std::string base64_decode(const std::string& text) {
  std::string out(text.size() / 4 * 3 + 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(text.data()), static_cast<int>(text.size()));
  if (n < 0) return {};
  std::size_t len = static_cast<std::size_t>(n);
  if (!text.empty() && text.back() == '=') --len;
  if (text.size() > 1 && text[text.size() - 2] == '=') --len;
  out.resize(len);
  return out;
}

entry_call call_for(const planned_entry& e, const request_context& ctx, const bundle_options& options) {
  entry_call call;
  call.method = e.method;
  call.url = e.url;
  call.context = &ctx;
  static const std::pair<const char*, const char*> conditional_headers[] = {
      {"ifMatch", "If-Match"}, {"ifNoneMatch", "If-None-Match"}, {"ifModifiedSince", "If-Modified-Since"},
      {"ifNoneExist", "If-None-Exist"}};
  for (const auto& [element, header] : conditional_headers)
    if (std::string v = text_of(e.request->find(element)); !v.empty()) call.headers.push_back({header, v});
  call.headers.push_back({"Prefer", options.return_representation ? "return=representation" : "return=minimal"});
  if (e.method == "PATCH" && e.resource) {
    if (text_of(e.resource->find("resourceType")) == "Binary") {
      // JSON Patch travels as a Binary: contentType application/json-patch+json, data base64.
      call.raw_body = base64_decode(text_of(e.resource->find("data")));
      std::string ct = text_of(e.resource->find("contentType"));
      call.headers.push_back({"Content-Type", ct.empty() ? "application/json-patch+json" : ct});
    } else {
      call.resource = e.resource;
      call.headers.push_back({"Content-Type", "application/fhir+json"});
    }
  } else if (e.resource && (e.method == "POST" || e.method == "PUT")) {
    call.resource = e.resource;
  }
  return call;
}

// The response entry for one interaction's reply.
value response_entry(const entry_reply& reply, bool with_outcome) {
  const http_response& r = reply.response;
  value response = value::make_object();
  response.set("status", value::make_string(std::to_string(r.status) + " " + reason_phrase(r.status)));
  if (auto loc = r.header("Location"); !loc.empty()) response.set("location", value::make_string(std::string(loc)));
  if (auto etag = r.header("ETag"); !etag.empty()) response.set("etag", value::make_string(std::string(etag)));
  if (!reply.last_updated.empty()) response.set("lastModified", value::make_string(reply.last_updated));
  value entry = value::make_object();
  bool is_outcome = r.status >= 400;
  if (!r.body.empty() && (is_outcome ? with_outcome : true)) {
    if (is_outcome) response.set("outcome", value::make_raw_json(r.body));
    else entry.set("resource", value::make_raw_json(r.body));
  }
  entry.set("response", std::move(response));
  return entry;
}

value response_bundle(std::string_view type, std::vector<value> entries) {
  value bundle = value::make_object();
  bundle.set("resourceType", value::make_string("Bundle"));
  bundle.set("id", value::make_string(new_resource_id()));
  bundle.set("type", value::make_string(std::string(type)));
  value list = value::make_array();
  for (auto& e : entries) list.push_back(std::move(e));
  if (!list.items().empty()) bundle.set("entry", std::move(list));
  return bundle;
}

// The failing entry's OperationOutcome: a first issue naming the entry, then the entry's own.
[[noreturn]] void fail_transaction(const planned_entry& e, const entry_reply& reply) {
  const http_response& r = reply.response;
  fhir::issue_list inner;
  std::string detail = "HTTP " + std::to_string(r.status);
  value outcome;
  fhir::issue_list ignored;
  if (!r.body.empty() && fhir::parse_json(r.body, outcome, ignored))
    if (const value* list = outcome.find("issue"); list && list->is_array())
      for (const auto& i : list->items()) {
        std::string diagnostics = text_of(i.find("diagnostics"));
        std::string location;
        if (const value* ex = i.find("expression"); ex && ex->is_array() && !ex->items().empty())
          location = text_of(&ex->items()[0]);
        if (inner.empty() && !diagnostics.empty()) detail = diagnostics;
        inner.error(issue_type::processing, diagnostics, location);
      }
  fhir::issue_list issues;
  issue_type type = r.status == 404 ? issue_type::not_found
                    : (r.status == 409 || r.status == 412) ? issue_type::conflict
                                                           : issue_type::processing;
  issues.error(type,
               "The transaction failed at " + where(e) + " (" + e.method + " " + e.url + "): " + detail +
                   "; nothing was written",
               where(e));
  issues.append(inner);
  throw fhir_failure(r.status >= 400 ? r.status : 400, std::move(issues));
}

value run_transaction(resource_store& store, const request_context& ctx, std::vector<planned_entry>& entries,
                      const bundle_host& host, const bundle_options& options) {
  std::vector<std::size_t> order(entries.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return method_rank(entries[a].method) < method_rank(entries[b].method);
  });

  std::vector<value> replies(entries.size());
  // The caller's open transaction (a message adapter recording the message with its resources)
  // or one of our own.
  std::unique_ptr<store_transaction> own;
  request_context tctx = ctx;
  if (!ctx.transaction) {
    own = store.begin(ctx);
    tctx.transaction = own.get();
  }

  auto run = [&](planned_entry& e) {
    entry_call call = call_for(e, tctx, options);
    call.assigned_id = e.method == "POST" ? e.target_id : std::string();
    if (e.method == "POST") {  // the condition was settled while planning
      call.headers.erase(std::remove_if(call.headers.begin(), call.headers.end(),
                                        [](const http_header& h) { return h.name == "If-None-Exist"; }),
                         call.headers.end());
    }
    if (e.method == "PUT" && !e.query.empty()) call.url = e.type + "/" + e.target_id;
    entry_reply reply = host.dispatch(call);
    if (reply.response.status >= 400) fail_transaction(e, reply);
    replies[e.index] = response_entry(reply, false);
  };

  // 1. Deletes.
  for (std::size_t i : order)
    if (entries[i].method == "DELETE") run(entries[i]);

  // 2. Which id every created or conditionally updated entry gets, before anything references it.
  std::map<std::string, std::string> ids;  // fullUrl -> Type/id
  for (std::size_t i : order) {
    planned_entry& e = entries[i];
    if (e.method == "POST") {
      std::string condition = text_of(e.request->find("ifNoneExist"));
      if (auto q = condition.find('?'); q != std::string::npos) condition.erase(0, q + 1);
      std::vector<std::string> found;
      if (!condition.empty()) found = host.find(tctx, e.type, condition, 2);
      if (found.size() > 1)
        entry_failure(e, 412, issue_type::multiple_matches, "ifNoneExist matches more than one " + e.type,
                      ".request.ifNoneExist");
      e.matched_existing = found.size() == 1;
      e.target_id = e.matched_existing ? found[0] : new_resource_id();
    } else if (e.method == "PUT" && !e.query.empty()) {
      auto found = host.find(tctx, e.type, e.query, 2);
      if (found.size() > 1)
        entry_failure(e, 412, issue_type::multiple_matches, "the conditional update matches more than one " + e.type,
                      ".request.url");
      std::string body_id = text_of(e.resource->find("id"));
      e.target_id = !found.empty() ? found[0] : !body_id.empty() ? body_id : new_resource_id();
      if (!found.empty() && !body_id.empty() && body_id != found[0])
        entry_failure(e, 400, issue_type::invalid,
                      "the resource id '" + body_id + "' differs from the matched " + e.type + "/" + found[0],
                      ".resource.id");
      e.resource->set("id", value::make_string(e.target_id));
    } else if (e.method == "PUT") {
      e.target_id = e.id;
    } else {
      continue;
    }
    if (!e.full_url.empty()) ids[e.full_url] = e.type + "/" + e.target_id;
  }
  for (auto& e : entries)
    if (e.resource) rewrite_references(*e.resource, ids, e, where(e) + ".resource");
  std::vector<std::pair<std::string, std::string>> updated;  // lock them all in one round trip
  for (const auto& e : entries) {
    if (e.method == "PUT" || (e.method == "POST" && !e.matched_existing)) updated.emplace_back(e.type, e.target_id);
    else if (e.method == "PATCH" && !e.id.empty()) updated.emplace_back(e.type, e.id);
  }
  store.lock_for_write(tctx, updated);

  // 3. Creates, then updates and patches, then reads; each sees the entries before it.
  for (std::size_t i : order) {
    planned_entry& e = entries[i];
    if (e.method == "DELETE") continue;
    if (e.resource) resolve_conditional_references(*e.resource, e, host, tctx, where(e) + ".resource");
    if (e.method == "POST" && e.matched_existing) {
      entry_call read_call;
      read_call.method = "GET";
      read_call.url = e.type + "/" + e.target_id;
      read_call.context = &tctx;
      entry_reply existing = host.dispatch(read_call);
      value entry = response_entry(existing, false);
      value* response = entry.find("response");
      response->set("status", value::make_string("200 OK"));
      std::string etag = text_of(response->find("etag"));  // W/"3"
      std::string version = etag.size() > 3 ? etag.substr(3, etag.size() - 4) : "1";
      response->set("location",
                    value::make_string(options.base_url + "/" + e.type + "/" + e.target_id + "/_history/" + version));
      if (!options.return_representation) entry.erase("resource");
      replies[e.index] = std::move(entry);
      continue;
    }
    run(e);
  }
  if (own) store.commit(*own);
  return response_bundle("transaction-response", std::move(replies));
}

value run_batch(const request_context& ctx, std::vector<planned_entry>& entries, const bundle_host& host,
                const bundle_options& options) {
  std::vector<value> replies;
  replies.reserve(entries.size());
  for (auto& e : entries) {
    try {
      if (e.resource) {
        // Batch entries are independent: a reference to another entry cannot be honoured.
        rewrite_references(*e.resource, {}, e, where(e) + ".resource");
        resolve_conditional_references(*e.resource, e, host, ctx, where(e) + ".resource");
      }
      entry_call call = call_for(e, ctx, options);
      call.validated = false;  // the Bundle was not validated as a whole: each entry is on its own
      entry_reply reply = host.dispatch(call);
      replies.push_back(response_entry(reply, true));
    } catch (const fhir_failure& failure) {
      entry_reply reply;
      reply.response.status = failure.status();
      reply.response.body = fhir::to_json(fhir::to_operation_outcome(failure.issues()));
      replies.push_back(response_entry(reply, true));
    }
  }
  return response_bundle("batch-response", std::move(replies));
}

}  // namespace

value process_bundle(resource_store& store, const request_context& ctx, value bundle, const bundle_host& host,
                     const bundle_options& options) {
  std::string type = text_of(bundle.find("type"));
  if (type != "transaction" && type != "batch")
    throw fhir_failure(400, issue_type::invalid,
                       "POST to the base URL takes a Bundle of type transaction or batch, not '" + type + "'",
                       "Bundle.type");
  if (type == "batch") {
    auto entries = plan_entries(bundle, options, false);
    return run_batch(ctx, entries, host, options);
  }
  if (ctx.transaction) {  // inside the caller's transaction: the caller retries and commits
    auto entries = plan_entries(bundle, options, true);
    return run_transaction(store, ctx, entries, host, options);
  }
  for (int attempt = 1;; ++attempt) {
    value working = attempt == max_transaction_attempts ? std::move(bundle) : bundle;  // references get rewritten
    auto entries = plan_entries(working, options, true);
    try {
      return run_transaction(store, ctx, entries, host, options);
    } catch (const pqxx::unique_violation&) {
      if (attempt >= max_transaction_attempts) throw;
    } catch (const pqxx::serialization_failure&) {
      if (attempt >= max_transaction_attempts) throw;
    } catch (const pqxx::deadlock_detected&) {
      if (attempt >= max_transaction_attempts) throw;
    }
  }
}

}  // namespace yilian::gateway::detail
