#include "yilian/gateway/fhir_api.hpp"
#include "yilian/gateway/operation.hpp"
#include "yilian/gateway/search.hpp"
#include "search_index.hpp"
#include "bundle_processor.hpp"

#include <pqxx/except>

#include <boost/url/parse.hpp>
#include <boost/url/url_view.hpp>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <iostream>
#include <random>
#include <sstream>

#include "yilian/fhir/fhirpath_patch.hpp"
#include "yilian/fhir/issues.hpp"
#include "yilian/fhir/json.hpp"
#include "yilian/fhir/json_patch.hpp"
#include "yilian/fhir/subset.hpp"
#include "yilian/fhir/validator.hpp"
#include "yilian/fhir/xml.hpp"
#include "yilian/profiles/alliance.hpp"

namespace yilian::gateway {
namespace {

using fhir::issue_list;
using fhir::issue_type;
using fhir::value;
using fhir::summary_mode;

// ---------------------------------------------------------------------------------------------
// Errors: an interaction throws api_error; handle() turns it (and anything else) into a response.

struct api_error {
  int status;
  issue_list issues;
};

[[noreturn]] void fail(int status, issue_type type, std::string diagnostics, std::string location = {}) {
  issue_list issues;
  issues.error(type, std::move(diagnostics), std::move(location));
  throw api_error{status, std::move(issues)};
}

// ---------------------------------------------------------------------------------------------
// Request target: path segments below the base path and decoded query parameters.

struct query_param {
  std::string name;
  std::string value;
};

struct parsed_target {
  std::vector<std::string> segments;
  std::vector<query_param> params;
  std::string query;  // raw query text (for self links)

  const query_param* find(std::string_view name) const {
    for (const auto& p : params)
      if (p.name == name) return &p;
    return nullptr;
  }
};

// Clients (curl users especially) send characters RFC 3986 does not allow unencoded, such as the
// '|' of token searches; encode them before the strict URL grammar sees them, as HAPI accepts them.
std::string encode_lenient(std::string_view text) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  out.reserve(text.size());
  for (unsigned char ch : text) {
    bool allowed = std::isalnum(ch) || std::string_view("-._~!$&'()*+,;=:@/?%").find(static_cast<char>(ch)) !=
                                           std::string_view::npos;
    if (allowed) {
      out.push_back(static_cast<char>(ch));
    } else {
      out.push_back('%');
      out.push_back(hex[ch >> 4]);
      out.push_back(hex[ch & 15]);
    }
  }
  return out;
}

void parse_form(std::string_view text, std::vector<query_param>& out) {
  std::string with_question = "/?" + encode_lenient(text);
  auto u = boost::urls::parse_origin_form(with_question);
  if (!u) fail(400, issue_type::invalid, "Malformed form body");
  for (auto p : u->params()) out.push_back({std::string(p.key), p.has_value ? std::string(p.value) : std::string()});
}

parsed_target parse_target(std::string_view raw_target, std::string_view base_path) {
  std::string target = encode_lenient(raw_target);
  auto u = boost::urls::parse_origin_form(target);
  if (!u) fail(400, issue_type::invalid, "Malformed request target");
  parsed_target out;
  std::vector<std::string> all;
  for (auto s : u->segments()) all.push_back(std::string(s));
  // Strip the base path ("/fhir").
  std::vector<std::string> base;
  auto bu = boost::urls::parse_origin_form(base_path.empty() ? "/" : base_path);
  if (bu)
    for (auto s : bu->segments())
      if (!s.empty()) base.push_back(std::string(s));
  if (all.size() < base.size() || !std::equal(base.begin(), base.end(), all.begin()))
    fail(404, issue_type::not_found, "No FHIR endpoint at this path; the API is under " + std::string(base_path));
  out.segments.assign(all.begin() + static_cast<std::ptrdiff_t>(base.size()), all.end());
  while (!out.segments.empty() && out.segments.back().empty()) out.segments.pop_back();
  for (auto p : u->params()) out.params.push_back({std::string(p.key), p.has_value ? std::string(p.value) : std::string()});
  out.query = std::string(u->encoded_query());
  return out;
}

bool is_valid_id(std::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.';
  });
}

// ---------------------------------------------------------------------------------------------
// Content negotiation.

enum class wire_format { json, xml };

struct output_format {
  wire_format format = wire_format::json;
  bool pretty = false;
};

std::string_view strip_media_params(std::string_view media) {
  auto semi = media.find(';');
  if (semi != std::string_view::npos) media = media.substr(0, semi);
  while (!media.empty() && media.front() == ' ') media.remove_prefix(1);
  while (!media.empty() && media.back() == ' ') media.remove_suffix(1);
  return media;
}

std::optional<wire_format> format_of_media(std::string_view media) {
  media = strip_media_params(media);
  if (iequals(media, "application/fhir+json") || iequals(media, "application/json") || iequals(media, "json") ||
      iequals(media, "application/json+fhir") || iequals(media, "text/json"))
    return wire_format::json;
  if (iequals(media, "application/fhir+xml") || iequals(media, "application/xml") || iequals(media, "xml") ||
      iequals(media, "text/xml") || iequals(media, "application/xml+fhir"))
    return wire_format::xml;
  return std::nullopt;
}

output_format negotiate_output(const http_request& req, const parsed_target& t) {
  output_format out;
  if (const auto* p = t.find("_pretty")) out.pretty = p->value == "true";
  if (const auto* f = t.find("_format")) {
    auto fmt = format_of_media(f->value);
    if (!fmt) fail(406, issue_type::not_supported, "Unsupported _format '" + f->value + "'; use json or xml");
    out.format = *fmt;
    return out;
  }
  std::string_view accept = req.header("Accept");
  if (accept.empty()) return out;
  bool any = false;
  std::size_t pos = 0;
  while (pos <= accept.size()) {
    auto comma = accept.find(',', pos);
    auto item = strip_media_params(accept.substr(pos, comma == std::string_view::npos ? std::string_view::npos : comma - pos));
    if (auto fmt = format_of_media(item)) {
      out.format = *fmt;
      return out;
    }
    if (item == "*/*" || iequals(item, "application/*") || item.empty()) any = true;
    if (comma == std::string_view::npos) break;
    pos = comma + 1;
  }
  if (!any) fail(406, issue_type::not_supported, "None of the accepted media types is supported: " + std::string(accept) +
                                                     "; use application/fhir+json or application/fhir+xml");
  return out;
}

std::string_view content_type_of(wire_format f) {
  return f == wire_format::json ? "application/fhir+json;charset=utf-8" : "application/fhir+xml;charset=utf-8";
}

// Parses a resource body in the format its Content-Type names (sniffed when absent).
value parse_resource_body(const http_request& req) {
  std::string_view ct = req.header("Content-Type");
  std::optional<wire_format> fmt;
  if (!ct.empty()) {
    fmt = format_of_media(ct);
    if (!fmt)
      fail(415, issue_type::not_supported, "Unsupported Content-Type '" + std::string(ct) +
                                               "'; send application/fhir+json or application/fhir+xml");
  } else {
    auto first = req.body.find_first_not_of(" \t\r\n");
    fmt = (first != std::string::npos && req.body[first] == '<') ? wire_format::xml : wire_format::json;
  }
  if (req.body.find_first_not_of(" \t\r\n") == std::string::npos)
    fail(400, issue_type::required, "The request has no body; a FHIR resource is required");
  value out;
  issue_list issues;
  bool ok = *fmt == wire_format::json ? fhir::parse_json(req.body, out, issues) : fhir::parse_xml(req.body, out, issues);
  if (!ok || issues.has_errors()) throw api_error{400, std::move(issues)};
  return out;
}

// ---------------------------------------------------------------------------------------------
// Headers and dates.

std::string http_date(std::string_view instant) {
  // instant: YYYY-MM-DDThh:mm:ss[.fff](Z|+hh:mm)
  std::tm tm{};
  if (instant.size() < 19) return {};
  auto num = [&](std::size_t pos, std::size_t len) {
    int v = 0;
    std::from_chars(instant.data() + pos, instant.data() + pos + len, v);
    return v;
  };
  tm.tm_year = num(0, 4) - 1900;
  tm.tm_mon = num(5, 2) - 1;
  tm.tm_mday = num(8, 2);
  tm.tm_hour = num(11, 2);
  tm.tm_min = num(14, 2);
  tm.tm_sec = num(17, 2);
  std::time_t t = timegm(&tm);
  auto zone = instant.find_first_of("Z+-", 19);
  if (zone != std::string_view::npos && instant[zone] != 'Z' && instant.size() >= zone + 6) {
    int offset = num(zone + 1, 2) * 3600 + num(zone + 4, 2) * 60;
    t -= instant[zone] == '+' ? offset : -offset;
  }
  std::tm gmt{};
  gmtime_r(&t, &gmt);
  char buf[64];
  std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", &gmt);
  return buf;
}

std::string now_instant() {
  auto now = std::chrono::system_clock::now();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
  std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm gmt{};
  gmtime_r(&secs, &gmt);
  char buf[96];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03d+00:00", gmt.tm_year + 1900, gmt.tm_mon + 1, gmt.tm_mday,
                gmt.tm_hour, gmt.tm_min, gmt.tm_sec, static_cast<int>(ms % 1000));
  return buf;
}

std::string etag_of(std::int64_t version) { return "W/\"" + std::to_string(version) + "\""; }

// If-Match: W/"3", "3" or 3.
std::optional<std::int64_t> parse_if_match(std::string_view header) {
  if (header.empty()) return std::nullopt;
  std::string_view v = header;
  if (v.starts_with("W/")) v.remove_prefix(2);
  if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
  std::int64_t out = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  if (ec != std::errc{} || p != v.data() + v.size() || out < 1)
    fail(400, issue_type::invalid, "Malformed If-Match header '" + std::string(header) + "'; expected W/\"<version>\"");
  return out;
}

enum class prefer_return { representation, minimal, operation_outcome };

prefer_return parse_prefer_return(const http_request& req) {
  std::string_view prefer = req.header("Prefer");
  if (prefer.find("return=minimal") != std::string_view::npos) return prefer_return::minimal;
  if (prefer.find("return=OperationOutcome") != std::string_view::npos) return prefer_return::operation_outcome;
  return prefer_return::representation;
}

bool prefer_strict(const http_request& req) {
  return req.header("Prefer").find("handling=strict") != std::string_view::npos;
}

std::string random_id() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* hex = "0123456789abcdef";
  std::string out(36, '-');
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (i == 8 || i == 13 || i == 18 || i == 23) continue;
    out[i] = hex[rng() & 15];
  }
  out[14] = '4';
  return out;
}

// Criteria of conditional interactions: the query string minus result parameters.
std::vector<criterion> criteria_from(const std::vector<query_param>& params) {
  std::vector<criterion> out;
  for (const auto& p : params) {
    if (p.name == "_format" || p.name == "_pretty") continue;
    out.push_back({p.name, p.value});
  }
  return out;
}

std::vector<criterion> criteria_from_query_text(std::string_view text) {
  std::vector<query_param> params;
  auto q = text.find('?');
  parse_form(q == std::string_view::npos ? text : text.substr(q + 1), params);
  return criteria_from(params);
}

}  // namespace

// -----------------------------------------------------------------------------------------------

struct fhir_api::impl {
  resource_store& store;
  fhir_api_options options;
  const fhir::definitions& defs;
  std::vector<operation_definition> operations;  // before capability_json, which is built from it
  std::string capability_json;

  impl(resource_store& s, fhir_api_options o, const fhir::definitions& d)
      : store(s), options(std::move(o)), defs(d), capability_json(build_capability_statement()) {}

  // Per-request state.
  struct call {
    const http_request& req;
    parsed_target target;
    output_format out;
    request_context ctx;
    std::string base;  // public base URL
    // Set when the call is one entry of a Bundle:
    const value* parsed_body = nullptr;  // the entry's resource
    bool body_validated = false;         // ... validated already, with the whole Bundle
    std::string assigned_id{};           // transaction POST: create under this id
    mutable std::string last_updated{};  // instant of the version written or read, for the entry response
  };

  const operation_definition* find_operation(std::string_view name, operation_level level,
                                             std::string_view type) const {
    for (const auto& op : operations)
      if (op.level == level && op.name == name &&
          (op.types.empty() || std::find(op.types.begin(), op.types.end(), type) != op.types.end()))
        return &op;
    return nullptr;
  }

  http_response run_operation(const call& c, const operation_definition& op, std::string type, std::string id,
                              std::vector<std::string> tail) const {
    if (std::find(op.methods.begin(), op.methods.end(), c.req.method == "HEAD" ? "GET" : c.req.method) ==
        op.methods.end())
      method_not_allowed(c, "$" + op.name);
    operation_call oc{c.req, c.ctx, c.base, std::move(type), std::move(id), std::move(tail), {}};
    for (const auto& p : c.target.params) oc.params.emplace_back(p.name, p.value);
    if (c.req.method == "POST" &&
        iequals(strip_media_params(c.req.header("Content-Type")), "application/x-www-form-urlencoded")) {
      std::vector<query_param> form;
      parse_form(c.req.body, form);
      for (auto& p : form) oc.params.emplace_back(std::move(p.name), std::move(p.value));
    }
    operation_response r = op.handler(oc);
    http_response res;
    if (r.resource) {
      res = body_response(r.status, c, *r.resource);
    } else {
      res.status = r.status;
      res.body = std::move(r.body);
      if (!r.content_type.empty()) res.set_header("Content-Type", r.content_type);
    }
    for (auto& h : r.headers) res.set_header(h.name, std::move(h.value));
    return res;
  }


  std::string base_url_for(const http_request& req) const {
    if (!options.base_url.empty()) return options.base_url;
    std::string_view host = req.header("Host");
    if (host.empty()) host = "localhost";
    return "http://" + std::string(host) + options.base_path;
  }

  void require_type(std::string_view type) const {
    if (!defs.is_resource_type(type))
      fail(404, issue_type::not_found, "Unknown resource type '" + std::string(type) + "'");
    const auto* t = defs.find_type(type);
    if (t && t->is_abstract)
      fail(404, issue_type::not_found, "'" + std::string(type) + "' is abstract and cannot be used here");
  }

  static void require_id(std::string_view id) {
    if (!is_valid_id(id))
      fail(400, issue_type::invalid, "Invalid resource id '" + std::string(id) +
                                         "': 1 to 64 characters of A-Z, a-z, 0-9, '-' and '.'");
  }

  // --- response builders --------------------------------------------------------------------

  http_response body_response(int status, const call& c, const value& v) const {
    http_response res;
    res.status = status;
    res.set_header("Content-Type", std::string(content_type_of(c.out.format)));
    if (c.out.format == wire_format::json) {
      fhir::write_json(v, res.body, {.pretty = c.out.pretty});
    } else {
      issue_list ignored;
      value expanded = expand_raw(v);
      fhir::write_xml(expanded, res.body, ignored, {.pretty = c.out.pretty}, defs);
    }
    return res;
  }

  // A stored resource as the response body; the bytes go out untouched on the JSON fast path.
  http_response resource_response(int status, const call& c, const stored_resource& r) const {
    c.last_updated = r.last_updated;
    http_response res;
    if (c.out.format == wire_format::json && !c.out.pretty) {
      res.status = status;
      res.set_header("Content-Type", std::string(content_type_of(wire_format::json)));
      res.body = r.json;
    } else {
      res = body_response(status, c, parse_stored(r.json));
    }
    add_version_headers(res, r);
    return res;
  }

  static void add_version_headers(http_response& res, const stored_resource& r) {
    res.set_header("ETag", etag_of(r.version));
    if (auto d = http_date(r.last_updated); !d.empty()) res.set_header("Last-Modified", d);
  }

  std::string location_of(const call& c, const stored_resource& r) const {
    return c.base + "/" + r.type + "/" + r.id + "/_history/" + std::to_string(r.version);
  }

  // Create/update answer honouring Prefer: return=.
  http_response write_response(int status, const call& c, const stored_resource& r, std::string_view message) const {
    c.last_updated = r.last_updated;
    http_response res;
    switch (parse_prefer_return(c.req)) {
      case prefer_return::representation:
        res = resource_response(status, c, r);
        break;
      case prefer_return::minimal:
        res.status = status;
        add_version_headers(res, r);
        break;
      case prefer_return::operation_outcome: {
        issue_list info;
        info.add(fhir::severity::information, issue_type::informational, std::string(message));
        res = body_response(status, c, fhir::to_operation_outcome(info));
        add_version_headers(res, r);
        break;
      }
    }
    res.set_header("Location", location_of(c, r));
    res.set_header("Content-Location", location_of(c, r));
    return res;
  }

  static value parse_stored(const std::string& json) {
    value v;
    issue_list issues;
    if (!fhir::parse_json(json, v, issues)) throw std::runtime_error("stored resource is not valid JSON");
    return v;
  }

  // Replaces raw_json nodes by their parsed trees (the XML writer needs the tree).
  static value expand_raw(const value& v) {
    switch (v.kind()) {
      case fhir::value_kind::raw_json:
        return parse_stored(v.text());
      case fhir::value_kind::object: {
        value out = value::make_object();
        for (const auto& m : v.members()) out.members().push_back({m.name, expand_raw(m.val)});
        return out;
      }
      case fhir::value_kind::array: {
        value out = value::make_array();
        for (const auto& i : v.items()) out.push_back(expand_raw(i));
        return out;
      }
      default:
        return v;
    }
  }

  // --- validation ----------------------------------------------------------------------------

  // Parses and validates the body as a resource of `type`.
  value incoming_resource(const call& c, std::string_view type) const {
    value resource = c.parsed_body ? *c.parsed_body : parse_resource_body(c.req);
    issue_list issues;
    if (!c.body_validated &&
        !fhir::validate_resource(resource, issues, {.check_required_bindings = true, .expected_type = type}, defs))
      throw api_error{400, std::move(issues)};
    profiles::check_alliance_rules(resource, issues);
    if (issues.has_errors()) throw api_error{422, std::move(issues)};
    return resource;
  }

  // --- interactions ----------------------------------------------------------------------------

  http_response read(const call& c, const std::string& type, const std::string& id) const {
    require_type(type);
    require_id(id);
    auto r = store.read(c.ctx, type, id);
    if (!r) fail(404, issue_type::not_found, "Resource " + type + "/" + id + " is not known");
    if (r->deleted) {
      http_response res = error_response(c, 410, issue_type::deleted,
                                         "Resource " + type + "/" + id + " was deleted (version " +
                                             std::to_string(r->version) + ")");
      add_version_headers(res, *r);
      return res;
    }
    if (auto none_match = c.req.header("If-None-Match"); !none_match.empty() && none_match == etag_of(r->version)) {
      http_response res;
      res.status = 304;
      add_version_headers(res, *r);
      return res;
    }
    return resource_response(200, c, *r);
  }

  http_response vread(const call& c, const std::string& type, const std::string& id, const std::string& vid) const {
    require_type(type);
    require_id(id);
    std::int64_t version = 0;
    auto [p, ec] = std::from_chars(vid.data(), vid.data() + vid.size(), version);
    if (ec != std::errc{} || p != vid.data() + vid.size() || version < 1)
      fail(400, issue_type::invalid, "Invalid version id '" + vid + "'");
    auto r = store.vread(c.ctx, type, id, version);
    if (!r) fail(404, issue_type::not_found, "Version " + vid + " of " + type + "/" + id + " is not known");
    if (r->deleted) {
      http_response res = error_response(c, 410, issue_type::deleted,
                                         "Version " + vid + " of " + type + "/" + id + " is a deletion");
      add_version_headers(res, *r);
      return res;
    }
    return resource_response(200, c, *r);
  }

  http_response create(const call& c, const std::string& type) const {
    require_type(type);
    value resource = incoming_resource(c, type);
    resource.erase("id");  // the server assigns the id of a created resource
    std::optional<std::vector<criterion>> conditions;
    if (auto ine = c.req.header("If-None-Exist"); !ine.empty()) {
      conditions = criteria_from_query_text(ine);
      if (conditions->empty()) fail(400, issue_type::invalid, "If-None-Exist has no search criteria");
    }
    if (!c.assigned_id.empty()) {  // a transaction entry whose id was settled before any write
      write_result w = store.update(c.ctx, type, c.assigned_id, std::move(resource), std::nullopt, "POST");
      return write_response(201, c, w.resource, "Created " + type + "/" + w.resource.id);
    }
    write_result w = store.create(c.ctx, type, std::move(resource), conditions ? &*conditions : nullptr);
    if (w.unchanged) return write_response(200, c, w.resource, "A resource matching If-None-Exist already exists");
    return write_response(201, c, w.resource, "Created " + type + "/" + w.resource.id);
  }

  http_response update(const call& c, const std::string& type, const std::string& id) const {
    require_type(type);
    require_id(id);
    value resource = incoming_resource(c, type);
    const value* body_id = resource.find("id");
    if (!body_id || !body_id->is_string())
      fail(400, issue_type::required, "The resource in an update must have an id (" + id + ")", type + ".id");
    if (body_id->text() != id)
      fail(400, issue_type::invalid, "The id in the resource (" + body_id->text() + ") differs from the id in the URL (" +
                                         id + ")", type + ".id");
    auto if_match = parse_if_match(c.req.header("If-Match"));
    write_result w = store.update(c.ctx, type, id, std::move(resource), if_match);
    return write_response(w.created ? 201 : 200, c, w.resource,
                          (w.created ? "Created " : "Updated ") + type + "/" + id);
  }

  http_response conditional_update(const call& c, const std::string& type) const {
    require_type(type);
    auto criteria = criteria_from(c.target.params);
    if (criteria.empty()) fail(400, issue_type::invalid, "A conditional update needs search criteria in the URL");
    value resource = incoming_resource(c, type);
    write_result w = store.conditional_update(c.ctx, type, criteria, std::move(resource));
    return write_response(w.created ? 201 : 200, c, w.resource,
                          (w.created ? "Created " : "Updated ") + type + "/" + w.resource.id);
  }

  http_response remove(const call& c, const std::string& type, const std::string& id) const {
    require_type(type);
    require_id(id);
    auto if_match = parse_if_match(c.req.header("If-Match"));
    auto marker = store.remove(c.ctx, type, id, if_match);
    http_response res;
    if (parse_prefer_return(c.req) == prefer_return::minimal) {
      res.status = 204;
    } else {
      issue_list info;
      info.add(fhir::severity::information, issue_type::informational,
               marker ? "Deleted " + type + "/" + id : "Nothing to delete: " + type + "/" + id +
                                                           " does not exist or is already deleted");
      res = body_response(200, c, fhir::to_operation_outcome(info));
    }
    if (marker) res.set_header("ETag", etag_of(marker->version));
    return res;
  }

  http_response conditional_remove(const call& c, const std::string& type) const {
    require_type(type);
    auto criteria = criteria_from(c.target.params);
    if (criteria.empty()) fail(400, issue_type::invalid, "A conditional delete needs search criteria in the URL");
    auto deleted = store.conditional_remove(c.ctx, type, criteria, /*allow_multiple=*/true);
    issue_list info;
    info.add(fhir::severity::information, issue_type::informational,
             "Deleted " + std::to_string(deleted.size()) + " resource(s) of type " + type);
    return body_response(200, c, fhir::to_operation_outcome(info));
  }

  http_response patch(const call& c, const std::string& type, const std::string& id) const {
    require_type(type);
    require_id(id);
    // JSON Patch (application/json-patch+json) or FHIRPath Patch (a Parameters resource in JSON/XML).
    std::string_view ct = strip_media_params(c.req.header("Content-Type"));
    bool json_patch = iequals(ct, "application/json-patch+json");
    if (!json_patch && !format_of_media(ct))
      fail(415, issue_type::not_supported,
           "Unsupported PATCH Content-Type '" + std::string(ct) +
               "'; send application/json-patch+json (JSON Patch) or a Parameters resource as application/fhir+json "
               "or application/fhir+xml (FHIRPath Patch)");
    value patch_doc;
    if (json_patch) {
      issue_list parse_issues;
      if (!fhir::parse_json(c.req.body, patch_doc, parse_issues)) throw api_error{400, std::move(parse_issues)};
    } else {
      patch_doc = c.parsed_body ? *c.parsed_body : parse_resource_body(c.req);
      const value* rt = patch_doc.find("resourceType");
      if (!rt || rt->text() != "Parameters")
        fail(400, issue_type::invalid, "A FHIRPath Patch body must be a Parameters resource");
      issue_list issues;
      if (!fhir::validate_resource(patch_doc, issues, {.check_required_bindings = true, .expected_type = "Parameters"},
                                   defs))
        throw api_error{400, std::move(issues)};
    }
    auto if_match = parse_if_match(c.req.header("If-Match"));
    for (int attempt = 0;; ++attempt) {
      auto current = store.read(c.ctx, type, id);
      if (!current) fail(404, issue_type::not_found, "Resource " + type + "/" + id + " is not known");
      if (current->deleted) fail(410, issue_type::deleted, "Resource " + type + "/" + id + " was deleted");
      if (if_match && *if_match != current->version)
        fail(412, issue_type::conflict, "If-Match version " + std::to_string(*if_match) +
                                            " is not the current version " + std::to_string(current->version));
      value resource = parse_stored(current->json);
      issue_list issues;
      bool applied = json_patch ? fhir::apply_json_patch(resource, patch_doc, issues)
                                : fhir::apply_fhirpath_patch(resource, patch_doc, issues, defs);
      if (!applied) {
        bool failed_test = false;
        for (const auto& i : issues.all()) failed_test |= i.type == issue_type::processing;
        throw api_error{failed_test ? 422 : 400, std::move(issues)};
      }
      const value* rt = resource.find("resourceType");
      const value* rid = resource.find("id");
      if (!rt || rt->text() != type || !rid || rid->text() != id)
        fail(422, issue_type::business_rule, "A patch may not change the resource type or id");
      // The store writes versionId and lastUpdated; a patch may change the rest of meta (tags...).
      if (value* meta = resource.find("meta")) {
        meta->erase("versionId");
        meta->erase("lastUpdated");
        if (meta->members().empty()) resource.erase("meta");
      }
      issue_list validation;
      if (!fhir::validate_resource(resource, validation, {.check_required_bindings = true, .expected_type = type}, defs))
        throw api_error{422, std::move(validation)};
      try {
        write_result w = store.update(c.ctx, type, id, std::move(resource), current->version, "PATCH");
        return write_response(200, c, w.resource, "Patched " + type + "/" + id);
      } catch (const store_error& e) {
        // Someone else wrote in between: without the client's If-Match, apply the patch again.
        if (e.kind() != store_error_kind::version_conflict || if_match || attempt >= 5) throw;
      }
    }
  }

  http_response validate_operation(const call& c, const std::string& type) const {
    require_type(type);
    value resource = parse_resource_body(c.req);
    // $validate takes the resource directly or a Parameters with a `resource` parameter.
    if (const value* rt = resource.find("resourceType"); rt && rt->text() == "Parameters" && type != "Parameters") {
      if (const value* params = resource.find("parameter"); params && params->is_array())
        for (const auto& p : params->items())
          if (const value* name = p.find("name"); name && name->text() == "resource")
            if (const value* r = p.find("resource")) {
              value inner = *r;
              resource = std::move(inner);
              break;
            }
    }
    issue_list issues;
    fhir::validate_resource(resource, issues, {.check_required_bindings = true, .expected_type = type}, defs);
    return body_response(issues.has_errors() ? 400 : 200, c, fhir::to_operation_outcome(issues));
  }

  http_response history(const call& c, std::optional<std::string> type, std::optional<std::string> id) const {
    if (type) require_type(*type);
    if (id) require_id(*id);
    history_query q;
    q.type = type;
    q.id = id;
    std::size_t count = page_size(c);
    q.count = count;
    q.offset = page_offset(c);
    if (const auto* since = c.target.find("_since")) {
      if (!fhir::is_valid_primitive("instant", since->value) && !fhir::is_valid_primitive("dateTime", since->value))
        fail(400, issue_type::invalid, "Invalid _since '" + since->value + "': expected a FHIR instant", "_since");
      q.since = since->value;
    }
    for (const auto& p : c.target.params)
      if (p.name != "_since" && p.name != "_count" && p.name != "_offset" && p.name != "_format" && p.name != "_pretty" &&
          p.name != "_at" && prefer_strict(c.req))
        fail(400, issue_type::not_supported, "Unknown history parameter '" + p.name + "'");
    history_page page = store.history(c.ctx, q);
    std::string path = c.base + (type ? "/" + *type : "") + (id ? "/" + *id : "") + "/_history";
    value bundle = bundle_shell("history", page.total, path, c, q.offset, count, page.entries.size());
    value& entries = bundle.set("entry", value::make_array());
    for (const auto& r : page.entries) {
      value e = value::make_object();
      e.set("fullUrl", value::make_string(c.base + "/" + r.type + "/" + r.id));
      if (!r.deleted) e.set("resource", value::make_raw_json(r.json));
      value request = value::make_object();
      std::string method = r.method.empty() ? (r.deleted ? "DELETE" : (r.version == 1 ? "POST" : "PUT")) : r.method;
      request.set("method", value::make_string(method));
      request.set("url", value::make_string(method == "POST" ? r.type : r.type + "/" + r.id));
      e.set("request", std::move(request));
      value response = value::make_object();
      response.set("status", value::make_string(r.deleted ? "204" : (r.version == 1 ? "201" : "200")));
      response.set("etag", value::make_string(etag_of(r.version)));
      response.set("lastModified", value::make_string(r.last_updated));
      e.set("response", std::move(response));
      entries.push_back(std::move(e));
    }
    if (entries.items().empty()) bundle.erase("entry");
    return body_response(200, c, bundle);
  }

  // Result parameters (how to page, sort, shape the Bundle); every other parameter filters.
  static bool is_result_param(std::string_view name) {
    static const char* const names[] = {"_count", "_sort", "_total", "_summary", "_elements", "_cursor",
                                        "_format", "_pretty", "_include", "_revinclude"};
    std::string_view base = name.substr(0, name.find(':'));
    return std::find(std::begin(names), std::end(names), base) != std::end(names);
  }

  static include_spec parse_include(const query_param& p, bool reverse) {
    include_spec spec;
    spec.iterate = p.name.ends_with(":iterate") || p.name.ends_with(":recurse");
    if (p.value == "*") {
      spec.source_type = spec.param = "*";
      return spec;
    }
    auto parts = split_on(p.value, ':');
    if (parts.size() < 2 || parts.size() > 3)
      fail(400, issue_type::invalid, "Invalid " + p.name + " '" + p.value + "': expected Type:parameter[:targetType]",
           p.name);
    spec.source_type = parts[0];
    spec.param = parts[1];
    if (parts.size() == 3) spec.target_type = parts[2];
    const auto& d = fhir::definitions::r4();
    if (!d.is_resource_type(spec.source_type))
      fail(400, issue_type::invalid, "Unknown resource type in " + p.name + " '" + p.value + "'", p.name);
    const auto* def = d.find_search_param(spec.source_type, spec.param);
    if (spec.param != "*" && (!def || def->type != "reference"))
      fail(400, issue_type::invalid, "'" + spec.param + "' is not a reference parameter of " + spec.source_type, p.name);
    if (!spec.target_type.empty() && !d.is_resource_type(spec.target_type))
      fail(400, issue_type::invalid, "Unknown target type in " + p.name + " '" + p.value + "'", p.name);
    (void)reverse;
    return spec;
  }

  static std::vector<std::string> split_on(std::string_view s, char sep) {
    std::vector<std::string> out(1);
    for (char ch : s) {
      if (ch == sep) out.emplace_back();
      else out.back() += ch;
    }
    return out;
  }

  http_response search(const call& c, const std::string& type, const std::vector<query_param>& params,
                       const std::string& compartment_type = {}, const std::string& compartment_id = {}) const {
    require_type(type);
    search_query q;
    q.base_url = c.base;
    q.compartment_type = compartment_type;
    q.compartment_id = compartment_id;
    q.count = page_size(c);
    issue_list ignored;
    bool strict = prefer_strict(c.req);
    auto ignore = [&](const std::string& name, const std::string& message) {
      if (strict) fail(400, issue_type::not_supported, message, name);
      ignored.add(fhir::severity::warning, issue_type::not_supported, message + "; it was ignored", name);
    };
    std::optional<summary_mode> summary;
    bool summary_count = false;
    std::vector<std::string> elements;
    for (const auto& p : params) {
      const std::string& name = p.name;
      if (!is_result_param(name)) {
        q.criteria.push_back({name, p.value});
        continue;
      }
      if (name == "_sort") {
        for (const auto& key : split_on(p.value, ',')) {
          if (key.empty() || key == "-") fail(400, issue_type::invalid, "Invalid _sort '" + p.value + "'", "_sort");
          bool desc = key.front() == '-';
          q.sort.push_back({desc ? key.substr(1) : key, desc});
        }
      } else if (name == "_total") {
        if (p.value == "none") q.total = total_mode::none;
        else if (p.value == "estimate") q.total = total_mode::estimate;
        else if (p.value == "accurate") q.total = total_mode::accurate;
        else fail(400, issue_type::invalid, "Invalid _total '" + p.value + "': none, estimate or accurate", "_total");
      } else if (name == "_summary") {
        if (p.value == "true") summary = summary_mode::summary;
        else if (p.value == "text") summary = summary_mode::text;
        else if (p.value == "data") summary = summary_mode::data;
        else if (p.value == "false") summary = summary_mode::full;
        else if (p.value == "count") summary_count = true;
        else fail(400, issue_type::invalid, "Invalid _summary '" + p.value + "': true, text, data, count or false", "_summary");
      } else if (name == "_elements") {
        for (const auto& e : split_on(p.value, ','))
          if (!e.empty()) elements.push_back(e);
      } else if (name == "_cursor") {
        q.cursor = p.value;
      } else if (name.starts_with("_include")) {
        q.includes.push_back(parse_include(p, false));
      } else if (name.starts_with("_revinclude")) {
        q.revincludes.push_back(parse_include(p, true));
      }
    }
    for (const auto& name : unknown_criteria(type, q.criteria)) {
      std::string code = name.substr(0, name.find_first_of(":."));
      ignore(name, "Search parameter '" + code + "' is not known for " + type + " (or not supported by this server)");
      std::erase_if(q.criteria, [&](const criterion& cr) { return cr.name == name; });
    }
    if (summary_count) {
      q.count = 0;
      q.total = total_mode::accurate;
    }
    auto result = run_search(store, c.ctx, type, q);

    value bundle = new_bundle("searchset");
    if (result.total) bundle.set("total", value::make_number(std::to_string(*result.total)));
    std::string path = c.base + "/" + (compartment_type.empty() ? type : compartment_type + "/" + compartment_id + "/" + type);
    std::string kept;
    for (const auto& p : params) {
      if (p.name == "_cursor") continue;
      kept += (kept.empty() ? "" : "&") + url_encode(p.name) + "=" + url_encode(p.value);
    }
    value links = value::make_array();
    auto add_link = [&](const char* rel, const std::string& cursor) {
      value l = value::make_object();
      l.set("relation", value::make_string(rel));
      std::string url = path + "?" + kept;
      if (!cursor.empty()) url += (kept.empty() ? "_cursor=" : "&_cursor=") + cursor;
      l.set("url", value::make_string(std::move(url)));
      links.push_back(std::move(l));
    };
    add_link("self", q.cursor);
    if (!q.cursor.empty()) add_link("first", "");
    if (!result.prev_cursor.empty()) add_link("previous", result.prev_cursor);
    if (!result.next_cursor.empty()) add_link("next", result.next_cursor);
    bundle.set("link", std::move(links));

    bool subset = (summary && *summary != summary_mode::full) || (!elements.empty() && !summary);
    auto resource_value = [&](const stored_resource& r) {
      if (!subset) return value::make_raw_json(r.json);
      return fhir::subset_resource(parse_stored(r.json), summary.value_or(summary_mode::full), elements, defs);
    };
    value& entries = bundle.set("entry", value::make_array());
    auto add_entry = [&](const stored_resource& r, const char* mode) {
      value e = value::make_object();
      e.set("fullUrl", value::make_string(c.base + "/" + r.type + "/" + r.id));
      e.set("resource", resource_value(r));
      value s = value::make_object();
      s.set("mode", value::make_string(mode));
      e.set("search", std::move(s));
      entries.push_back(std::move(e));
    };
    for (const auto& r : result.matches) add_entry(r, "match");
    for (const auto& r : result.included) add_entry(r, "include");
    if (!ignored.empty()) {
      value e = value::make_object();
      e.set("resource", fhir::to_operation_outcome(ignored));
      value s = value::make_object();
      s.set("mode", value::make_string("outcome"));
      e.set("search", std::move(s));
      entries.push_back(std::move(e));
    }
    if (entries.items().empty()) bundle.erase("entry");
    return body_response(200, c, bundle);
  }

  std::size_t page_size(const call& c) const {
    std::size_t count = options.default_page_size;
    if (const auto* p = c.target.find("_count")) {
      std::size_t v = 0;
      auto [ptr, ec] = std::from_chars(p->value.data(), p->value.data() + p->value.size(), v);
      if (ec != std::errc{} || ptr != p->value.data() + p->value.size())
        fail(400, issue_type::invalid, "Invalid _count '" + p->value + "': expected a non-negative integer", "_count");
      count = std::min(v, options.max_page_size);
    }
    return count;
  }

  static std::size_t page_offset(const call& c) {
    if (const auto* p = c.target.find("_offset")) {
      std::size_t v = 0;
      auto [ptr, ec] = std::from_chars(p->value.data(), p->value.data() + p->value.size(), v);
      if (ec != std::errc{} || ptr != p->value.data() + p->value.size())
        fail(400, issue_type::invalid, "Invalid _offset '" + p->value + "'", "_offset");
      return v;
    }
    return 0;
  }

  static value new_bundle(std::string_view bundle_type) {
    value bundle = value::make_object();
    bundle.set("resourceType", value::make_string("Bundle"));
    bundle.set("id", value::make_string(random_id()));
    value meta = value::make_object();
    meta.set("lastUpdated", value::make_string(now_instant()));
    bundle.set("meta", std::move(meta));
    bundle.set("type", value::make_string(std::string(bundle_type)));
    return bundle;
  }

  // Bundle with id, meta, type, total and self/next/previous links (offset paging).
  value bundle_shell(std::string_view bundle_type, std::int64_t total, const std::string& path, const call& c,
                     std::size_t offset, std::size_t count, std::size_t returned) const {
    value bundle = new_bundle(bundle_type);
    bundle.set("total", value::make_number(std::to_string(total)));
    // Links keep the caller's parameters and replace _count/_offset.
    std::string kept;
    for (const auto& p : c.target.params) {
      if (p.name == "_count" || p.name == "_offset") continue;
      kept += (kept.empty() ? "" : "&") + url_encode(p.name) + "=" + url_encode(p.value);
    }
    auto link_to = [&](std::size_t off) {
      std::string url = path + "?" + kept + (kept.empty() ? "" : "&") + "_count=" + std::to_string(count);
      if (off) url += "&_offset=" + std::to_string(off);
      return url;
    };
    value links = value::make_array();
    auto add_link = [&](const char* rel, std::string url) {
      value l = value::make_object();
      l.set("relation", value::make_string(rel));
      l.set("url", value::make_string(std::move(url)));
      links.push_back(std::move(l));
    };
    add_link("self", link_to(offset));
    if (count > 0 && offset + returned < static_cast<std::size_t>(total)) add_link("next", link_to(offset + count));
    if (offset > 0) add_link("previous", link_to(offset > count ? offset - count : 0));
    bundle.set("link", std::move(links));
    return bundle;
  }

  static std::string url_encode(std::string_view s) {
    static const char* hex = "0123456789ABCDEF";
    std::string out;
    for (unsigned char ch : s) {
      if (std::isalnum(ch) || ch == '-' || ch == '_' || ch == '.' || ch == '~' || ch == '|' || ch == ':' || ch == '/' ||
          ch == ',' || ch == '$')
        out.push_back(static_cast<char>(ch));
      else {
        out.push_back('%');
        out.push_back(hex[ch >> 4]);
        out.push_back(hex[ch & 15]);
      }
    }
    return out;
  }

  http_response error_response(const call& c, int status, issue_type type, std::string message) const {
    issue_list issues;
    issues.error(type, std::move(message));
    return body_response(status, c, fhir::to_operation_outcome(issues));
  }

  // --- routing -------------------------------------------------------------------------------

  [[noreturn]] static void method_not_allowed(const call& c, std::string_view what) {
    fail(405, issue_type::not_supported,
         "Method " + c.req.method + " is not allowed on " + std::string(what));
  }

  http_response route(call& c) const {
    const auto& seg = c.target.segments;
    const std::string& m = c.req.method;
    bool get = m == "GET" || m == "HEAD";

    if (seg.empty()) {
      if (get) fail(400, issue_type::not_supported, "System-wide search arrives with the search capability; use /[type]");
      if (m == "POST") return bundle_interaction(c);
      method_not_allowed(c, "the base URL");
    }
    const std::string& first = seg[0];
    if (seg.size() == 1 && first == "metadata") {
      if (!get) method_not_allowed(c, "metadata");
      http_response res;
      if (c.out.format == wire_format::json && !c.out.pretty) {
        res.set_header("Content-Type", std::string(content_type_of(wire_format::json)));
        res.body = capability_json;
        return res;
      }
      return body_response(200, c, parse_stored(capability_json));
    }
    if (seg.size() == 1 && first == "_history") {
      if (!get) method_not_allowed(c, "_history");
      return history(c, std::nullopt, std::nullopt);
    }
    if (first.starts_with("$"))
      if (const auto* op = find_operation(std::string_view(first).substr(1), operation_level::system, ""))
        return run_operation(c, *op, {}, {}, std::vector<std::string>(seg.begin() + 1, seg.end()));
    if (first.starts_with("$") || first.starts_with("_"))
      fail(404, issue_type::not_supported, "Unknown system operation or path '" + first + "'");

    const std::string& type = first;
    if (seg.size() == 1) {
      if (get) return search(c, type, c.target.params);
      if (m == "POST") return create(c, type);
      if (m == "PUT") return conditional_update(c, type);
      if (m == "DELETE") return conditional_remove(c, type);
      method_not_allowed(c, type);
    }
    const std::string& second = seg[1];
    if (seg.size() == 2 && second == "_search") {
      if (m != "POST") method_not_allowed(c, type + "/_search");
      std::vector<query_param> params = c.target.params;
      std::string_view ct = strip_media_params(c.req.header("Content-Type"));
      if (!ct.empty() && !iequals(ct, "application/x-www-form-urlencoded"))
        fail(415, issue_type::not_supported, "POST _search takes application/x-www-form-urlencoded");
      parse_form(c.req.body, params);
      c.target.params = params;
      return search(c, type, params);
    }
    if (seg.size() == 2 && second == "_history") {
      if (!get) method_not_allowed(c, type + "/_history");
      return history(c, type, std::nullopt);
    }
    if (seg.size() == 2 && second == "$validate") {
      if (m != "POST") method_not_allowed(c, type + "/$validate");
      return validate_operation(c, type);
    }
    if (second.starts_with("$")) {
      require_type(type);
      if (seg.size() == 2)
        if (const auto* op = find_operation(std::string_view(second).substr(1), operation_level::type, type))
          return run_operation(c, *op, type, {}, {});
      fail(404, issue_type::not_supported, "Unknown operation '" + second + "' on " + type);
    }
    const std::string& id = second;
    if (seg.size() == 2) {
      if (get) return read(c, type, id);
      if (m == "PUT") return update(c, type, id);
      if (m == "DELETE") return remove(c, type, id);
      if (m == "PATCH") return patch(c, type, id);
      method_not_allowed(c, type + "/" + id);
    }
    if (seg.size() == 3 && defs.is_resource_type(seg[2])) {  // compartment search: Patient/123/Observation
      if (!get) method_not_allowed(c, seg[0] + "/" + seg[1] + "/" + seg[2]);
      require_type(type);
      require_id(second);
      if (defs.compartment_members(type).empty())
        fail(400, issue_type::not_supported, type + " is not a compartment (Patient, Encounter, RelatedPerson, Practitioner, Device)");
      if (!defs.compartment_params(type, seg[2]) && seg[2] != type)
        fail(400, issue_type::invalid, seg[2] + " is not in the " + type + " compartment");
      return search(c, seg[2], c.target.params, type, second);
    }
    if (seg.size() == 3 && seg[2] == "_history") {
      if (!get) method_not_allowed(c, type + "/" + id + "/_history");
      return history(c, type, id);
    }
    if (seg.size() == 4 && seg[2] == "_history") {
      if (!get) method_not_allowed(c, type + "/" + id + "/_history/" + seg[3]);
      return vread(c, type, id, seg[3]);
    }
    if (seg.size() == 3 && seg[2].starts_with("$")) {
      require_type(type);
      require_id(id);
      if (const auto* op = find_operation(std::string_view(seg[2]).substr(1), operation_level::instance, type))
        return run_operation(c, *op, type, id, {});
      fail(404, issue_type::not_supported, "Unknown operation '" + seg[2] + "' on " + type + "/" + id);
    }
    fail(404, issue_type::not_found, "No FHIR interaction at this path");
  }

  http_response handle(const http_request& req) const {
    call c{req, {}, {}, {}, {}};
    return guarded(c, [&] {
      c.base = base_url_for(req);
      c.target = parse_target(req.target, options.base_path);
      c.ctx.correlation_id = std::string(req.header("X-Request-Id"));
      if (c.ctx.correlation_id.empty()) c.ctx.correlation_id = std::to_string(++request_counter);
      c.out = negotiate_output(req, c.target);
      http_response res = route(c);
      if (req.method == "HEAD") res.body.clear();
      return res;
    });
  }

  inline static std::atomic<std::uint64_t> request_counter{0};

  // Runs `body` and turns every failure into an OperationOutcome response. Inside a transaction
  // Bundle, write conflicts propagate so the whole Bundle is retried.
  template <typename F>
  http_response guarded(call& c, F&& body) const {
    const http_request& req = c.req;
    try {
      return body();
    } catch (const api_error& e) {
      return outcome_response(c, e.status, e.issues);
    } catch (const fhir_failure& e) {
      return outcome_response(c, e.status(), e.issues());
    } catch (const store_error& e) {
      int status = 500;
      issue_type type = issue_type::exception;
      switch (e.kind()) {
        case store_error_kind::not_found: status = 404; type = issue_type::not_found; break;
        case store_error_kind::gone: status = 410; type = issue_type::deleted; break;
        case store_error_kind::version_conflict:
          status = req.header("If-Match").empty() ? 409 : 412;
          type = issue_type::conflict;
          break;
        case store_error_kind::multiple_matches: status = 412; type = issue_type::multiple_matches; break;
        case store_error_kind::invalid_criteria: status = 400; type = issue_type::invalid; break;
        case store_error_kind::schema_too_new: status = 500; type = issue_type::exception; break;
      }
      issue_list issues;
      issues.error(type, e.what());
      return outcome_response(c, status, issues);
    } catch (const pqxx::unique_violation&) {
      if (c.ctx.transaction) throw;
      return internal_error(c, "unique violation");
    } catch (const pqxx::serialization_failure&) {
      if (c.ctx.transaction) throw;
      return internal_error(c, "serialization failure");
    } catch (const pqxx::deadlock_detected&) {
      if (c.ctx.transaction) throw;
      return internal_error(c, "deadlock");
    } catch (const std::exception& e) {
      return internal_error(c, e.what());
    }
  }

  http_response internal_error(const call& c, const std::string& what) const {
    std::string id = c.ctx.correlation_id.empty() ? std::to_string(++request_counter) : c.ctx.correlation_id;
    std::cerr << "error [request " << id << "] " << c.req.method << " " << c.req.target << ": " << what << "\n";
    issue_list issues;
    issues.add(fhir::severity::fatal, issue_type::exception,
               "Internal error while processing the request (correlation id " + id + "); the server log has details");
    return outcome_response(c, 500, issues);
  }

  // --- transaction and batch Bundles ---------------------------------------------------------

  http_response bundle_interaction(const call& c) const {
    if (c.ctx.transaction) fail(400, issue_type::not_supported, "A Bundle entry cannot itself be a transaction or batch");
    value bundle = parse_resource_body(c.req);
    bool representation =
        parse_prefer_return(c.req) == prefer_return::representation && !c.req.header("Prefer").empty();
    return body_response(200, c, process_bundle(c, std::move(bundle), representation));
  }

  // Validates and runs a transaction or batch Bundle; `outer` gives the base URL and headers.
  value process_bundle(const call& outer, value bundle, bool return_representation) const {
    const call& c = outer;
    if (const value* rt = bundle.find("resourceType"); !rt || rt->text() != "Bundle")
      fail(400, issue_type::invalid, "POST to the base URL takes a transaction or batch Bundle", "resourceType");
    // A transaction is validated whole (the first problem fails it before any write); a batch's
    // entries are validated one by one, as each may fail on its own.
    if (const value* bt = bundle.find("type"); bt && bt->is_string() && bt->text() == "transaction") {
      issue_list issues;
      if (!fhir::validate_resource(bundle, issues, {.check_required_bindings = true, .expected_type = "Bundle"}, defs))
        throw api_error{400, std::move(issues)};
    }
    detail::bundle_host host;
    host.dispatch = [&](const detail::entry_call& ec) { return dispatch_entry(c, ec); };
    host.find = [&](const request_context& ctx, const std::string& type, const std::string& query, std::size_t limit) {
      if (!defs.is_resource_type(type))
        throw fhir_failure(400, issue_type::invalid, "Unknown resource type '" + type + "' in conditional criteria");
      auto criteria = criteria_from_query_text(query);
      if (criteria.empty()) throw fhir_failure(400, issue_type::invalid, "Empty conditional criteria for " + type);
      try {
        return store.find_ids(ctx, type, criteria, limit);
      } catch (const store_error& e) {
        throw fhir_failure(400, issue_type::invalid, e.what());
      }
    };
    detail::bundle_options bo;
    bo.max_entries = options.max_bundle_entries;
    bo.base_url = c.base;
    bo.return_representation = return_representation;
    return detail::process_bundle(store, c.ctx, std::move(bundle), host, bo);
  }

  // One Bundle entry through the same routing as a request of its own (JSON in and out).
  detail::entry_reply dispatch_entry(const call& outer, const detail::entry_call& ec) const {
    http_request sub;
    sub.method = ec.method;
    sub.target = options.base_path + "/" + ec.url;
    sub.headers = ec.headers;
    if (auto host = outer.req.header("Host"); !host.empty()) sub.headers.push_back({"Host", std::string(host)});
    sub.body = ec.raw_body;
    sub.remote_address = outer.req.remote_address;
    call c{sub, {}, {wire_format::json, false}, *ec.context, outer.base};
    c.parsed_body = ec.resource;
    c.body_validated = ec.resource && ec.validated;
    c.assigned_id = ec.assigned_id;
    http_response res = guarded(c, [&] {
      c.target = parse_target(sub.target, options.base_path);
      return route(c);
    });
    return {std::move(res), std::move(c.last_updated)};
  }

  http_response outcome_response(const call& c, int status, const issue_list& issues) const {
    http_response res;
    res.status = status;
    output_format out = c.out;
    res.set_header("Content-Type", std::string(content_type_of(out.format)));
    value outcome = fhir::to_operation_outcome(issues);
    if (out.format == wire_format::json) {
      fhir::write_json(outcome, res.body, {.pretty = out.pretty});
    } else {
      issue_list ignored;
      fhir::write_xml(outcome, res.body, ignored, {.pretty = out.pretty}, defs);
    }
    if (c.req.method == "HEAD") res.body.clear();
    return res;
  }

  // --- CapabilityStatement ---------------------------------------------------------------------

  std::string build_capability_statement() const {
    value cs = value::make_object();
    cs.set("resourceType", value::make_string("CapabilityStatement"));
    cs.set("status", value::make_string("active"));
    cs.set("date", value::make_string(now_instant().substr(0, 10)));
    cs.set("publisher", value::make_string("Yilian"));
    cs.set("kind", value::make_string("instance"));
    value software = value::make_object();
    software.set("name", value::make_string("Yilian FHIR gateway"));
    software.set("version", value::make_string(options.software_version));
    cs.set("software", std::move(software));
    value implementation = value::make_object();
    implementation.set("description", value::make_string("Yilian (医联) FHIR R4 gateway for medical alliances"));
    cs.set("implementation", std::move(implementation));
    cs.set("fhirVersion", value::make_string("4.0.1"));
    value formats = value::make_array();
    for (const char* f : {"application/fhir+json", "json", "application/fhir+xml", "xml"})
      formats.push_back(value::make_string(f));
    cs.set("format", std::move(formats));
    value patch_formats = value::make_array();
    for (const char* f : {"application/json-patch+json", "application/fhir+json", "application/fhir+xml"})
      patch_formats.push_back(value::make_string(f));
    cs.set("patchFormat", std::move(patch_formats));

    value rest = value::make_object();
    rest.set("mode", value::make_string("server"));
    value resources = value::make_array();
    for (const auto& type : defs.resource_types()) {
      value r = value::make_object();
      r.set("type", value::make_string(type));
      value interactions = value::make_array();
      for (const char* code : {"read", "vread", "update", "patch", "delete", "history-instance", "history-type",
                               "create", "search-type"}) {
        value i = value::make_object();
        i.set("code", value::make_string(code));
        interactions.push_back(std::move(i));
      }
      r.set("interaction", std::move(interactions));
      r.set("versioning", value::make_string("versioned-update"));
      r.set("readHistory", value::make_boolean(true));
      r.set("updateCreate", value::make_boolean(true));
      r.set("conditionalCreate", value::make_boolean(true));
      r.set("conditionalRead", value::make_string("not-supported"));
      r.set("conditionalUpdate", value::make_boolean(true));
      r.set("conditionalDelete", value::make_string("multiple"));
      value params = value::make_array();
      value includes = value::make_array();
      for (const auto* sp : detail::searchable_params(defs, type)) {
        if (sp->type == "reference")
          for (const auto& target : sp->target)
            includes.push_back(value::make_string(type + ":" + sp->code + ":" + target));
        value p = value::make_object();
        p.set("name", value::make_string(sp->code));
        p.set("definition", value::make_string(sp->url));
        p.set("type", value::make_string(sp->type));
        params.push_back(std::move(p));
      }
      if (!includes.items().empty()) r.set("searchInclude", std::move(includes));
      value revincludes = value::make_array();
      for (const auto& source : defs.resource_types())
        for (const auto* sp : detail::searchable_params(defs, source))
          if (sp->type == "reference" && std::find(sp->target.begin(), sp->target.end(), type) != sp->target.end())
            revincludes.push_back(value::make_string(source + ":" + sp->code + ":" + type));
      if (!revincludes.items().empty()) r.set("searchRevInclude", std::move(revincludes));
      if (!params.items().empty()) r.set("searchParam", std::move(params));
      value ops = value::make_array();
      value validate = value::make_object();
      validate.set("name", value::make_string("validate"));
      validate.set("definition", value::make_string("http://hl7.org/fhir/OperationDefinition/Resource-validate"));
      ops.push_back(std::move(validate));
      for (const auto& op : operations) {
        if (op.level == operation_level::system) continue;
        if (!op.types.empty() && std::find(op.types.begin(), op.types.end(), type) == op.types.end()) continue;
        value o = value::make_object();
        o.set("name", value::make_string(op.name));
        o.set("definition", value::make_string(op.definition_url));
        ops.push_back(std::move(o));
      }
      r.set("operation", std::move(ops));
      resources.push_back(std::move(r));
    }
    rest.set("resource", std::move(resources));
    value sys = value::make_array();
    for (const char* code : {"transaction", "batch", "history-system"}) {
      value interaction = value::make_object();
      interaction.set("code", value::make_string(code));
      sys.push_back(std::move(interaction));
    }
    rest.set("interaction", std::move(sys));
    value system_ops = value::make_array();
    for (const auto& op : operations) {
      if (op.level != operation_level::system) continue;
      value o = value::make_object();
      o.set("name", value::make_string(op.name));
      o.set("definition", value::make_string(op.definition_url));
      system_ops.push_back(std::move(o));
    }
    if (!system_ops.items().empty()) rest.set("operation", std::move(system_ops));
    value rest_list = value::make_array();
    rest_list.push_back(std::move(rest));
    cs.set("rest", std::move(rest_list));
    return fhir::to_json(cs);
  }
};

fhir_api::fhir_api(resource_store& store, fhir_api_options options, const fhir::definitions& defs)
    : impl_(std::make_unique<impl>(store, std::move(options), defs)) {}

fhir_api::~fhir_api() = default;

http_response fhir_api::handle(const http_request& request) const { return impl_->handle(request); }

fhir::value fhir_api::process_transaction(const request_context& ctx, fhir::value bundle) const {
  http_request req;
  req.method = "POST";
  req.target = impl_->options.base_path;
  impl::call c{req, {}, {}, ctx, impl_->options.base_url.empty() ? "http://localhost" + impl_->options.base_path
                                                                   : impl_->options.base_url};
  try {
    return impl_->process_bundle(c, std::move(bundle), false);
  } catch (const api_error& e) {
    throw fhir_failure(e.status, e.issues);
  } catch (const store_error& e) {
    throw fhir_failure(e.kind() == store_error_kind::multiple_matches ? 412 : 400, fhir::issue_type::processing, e.what());
  }
}

void fhir_api::add_operation(operation_definition operation) {
  impl_->operations.push_back(std::move(operation));
  impl_->capability_json = impl_->build_capability_statement();
}

const std::string& fhir_api::capability_statement_json() const noexcept { return impl_->capability_json; }

}  // namespace yilian::gateway
