// Patient/[id]/$everything: one SQL statement per page over the patient's compartment and the
// shared resources it references, ordered by (type, id) so a keyset cursor pages through it
// stably while data changes and without holding more than one page in memory.
#include <charconv>
#include <chrono>
#include <ctime>
#include <pqxx/pqxx>
#include <random>

#include "bulk_internal.hpp"
#include "yilian/fhir/json.hpp"
#include "yilian/gateway/bulk_data.hpp"

namespace yilian::gateway {
namespace {

using fhir::issue_type;
using fhir::value;

// Members: the patient and every resource linked to it by one of its type's compartment
// parameters. Wanted: members plus what they reference outside the patient-data types ($6).
// $1 tenant, $2 patient id, $3/$4 compartment (type, param) pairs, $5/$6 cursor (type, id),
// $7 types wanted ('{}' = all), $8 since ('-infinity' = all), $9 limit, $10 patient-data types.
constexpr const char* page_sql = R"sql(
WITH members AS (
  SELECT 'Patient'::text AS res_type, $2::text AS res_id
  UNION
  SELECT i.res_type, i.res_id
    FROM index_reference i
    JOIN unnest($3::text[], $4::text[]) AS link(res_type, param)
      ON link.res_type = i.res_type AND link.param = i.param
   WHERE i.tenant = $1 AND i.target_type = 'Patient' AND i.target_id = $2
), wanted AS (
  SELECT res_type, res_id FROM members
  UNION
  SELECT r.target_type, r.target_id
    FROM members m
    JOIN index_reference r ON r.tenant = $1 AND r.res_type = m.res_type AND r.res_id = m.res_id
   WHERE r.target_id <> '' AND r.target_type <> '' AND NOT (r.target_type = ANY($10::text[]))
)
SELECT c.res_type, c.res_id, c.body
  FROM wanted w
  JOIN resource_current c ON c.tenant = $1 AND c.res_type = w.res_type AND c.res_id = w.res_id
 WHERE NOT c.deleted
   AND (c.res_type, c.res_id) > ($5::text, $6::text)
   AND (cardinality($7::text[]) = 0 OR c.res_type = ANY($7::text[]))
   AND c.last_updated >= $8::timestamptz
 ORDER BY c.res_type, c.res_id
 LIMIT $9::int
)sql";

std::string now_instant() {
  auto now = std::chrono::system_clock::now();
  std::time_t t = std::chrono::system_clock::to_time_t(now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[40];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string random_bundle_id() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (int i = 0; i < 32; ++i) out += hex[rng() & 15];
  return out;
}

std::string url_encode(std::string_view s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char ch : s) {
    if (std::isalnum(ch) || ch == '-' || ch == '_' || ch == '.' || ch == '~' || ch == ',' || ch == ':' || ch == '/') {
      out.push_back(static_cast<char>(ch));
    } else {
      out.push_back('%');
      out.push_back(hex[ch >> 4]);
      out.push_back(hex[ch & 15]);
    }
  }
  return out;
}

class everything_operation {
 public:
  everything_operation(resource_store& store, everything_options options, const fhir::definitions& defs)
      : store_(store),
        options_(options),
        defs_(defs),
        links_(detail::patient_compartment_links(defs)),
        link_types_(detail::text_array(links_.types)),
        link_params_(detail::text_array(links_.params)),
        patient_data_types_(detail::text_array(detail::patient_data_types(defs))) {}

  operation_response operator()(const operation_call& call) const {
    std::vector<std::string> types = detail::parse_type_param(call, defs_);
    std::string since = detail::parse_since_param(call);
    std::size_t count = page_count(call);
    auto [after_type, after_id] = parse_cursor(call);

    auto patient = store_.read(call.context, "Patient", call.id);
    if (!patient || patient->deleted)
      throw fhir_failure(404, issue_type::not_found, "Patient/" + call.id + " is not known");

    std::vector<std::array<std::string, 3>> rows;  // type, id, body
    {
      auto conn = store_.acquire();
      pqxx::read_transaction tx(*conn);
      std::vector<std::string> params{call.context.tenant,
                                      call.id,
                                      link_types_,
                                      link_params_,
                                      after_type,
                                      after_id,
                                      detail::text_array(types),
                                      since.empty() ? "-infinity" : since,
                                      std::to_string(count + 1),
                                      patient_data_types_};
      for (const auto& row : tx.exec_params(page_sql, pqxx::prepare::make_dynamic_params(params)))
        rows.push_back({row[0].c_str(), row[1].c_str(), std::string(row[2].c_str(), row[2].size())});
    }
    bool more = rows.size() > count;
    if (more) rows.pop_back();

    value bundle = value::make_object();
    bundle.set("resourceType", value::make_string("Bundle"));
    bundle.set("id", value::make_string(random_bundle_id()));
    value meta = value::make_object();
    meta.set("lastUpdated", value::make_string(now_instant()));
    bundle.set("meta", std::move(meta));
    bundle.set("type", value::make_string("searchset"));

    std::string path = call.base_url + "/Patient/" + call.id + "/$everything";
    std::string kept;
    for (const auto& [name, v] : call.params)
      if (name != "_cursor") kept += (kept.empty() ? "" : "&") + url_encode(name) + "=" + url_encode(v);
    value links = value::make_array();
    auto add_link = [&](const char* relation, const std::string& cursor) {
      value link = value::make_object();
      link.set("relation", value::make_string(relation));
      std::string query = kept;
      if (!cursor.empty()) query += (kept.empty() ? "_cursor=" : "&_cursor=") + url_encode(cursor);
      std::string url = query.empty() ? path : path + "?" + query;
      link.set("url", value::make_string(std::move(url)));
      links.push_back(std::move(link));
    };
    const std::string* cursor = call.param("_cursor");
    add_link("self", cursor ? *cursor : std::string());
    if (cursor) add_link("first", "");
    if (more) add_link("next", rows.back()[0] + "/" + rows.back()[1]);
    bundle.set("link", std::move(links));

    if (!rows.empty()) {
      value entries = value::make_array();
      for (auto& [type, id, body] : rows) {
        value entry = value::make_object();
        entry.set("fullUrl", value::make_string(call.base_url + "/" + type + "/" + id));
        entry.set("resource", value::make_raw_json(std::move(body)));
        value search = value::make_object();
        search.set("mode", value::make_string("match"));
        entry.set("search", std::move(search));
        entries.push_back(std::move(entry));
      }
      bundle.set("entry", std::move(entries));
    }
    operation_response response;
    response.resource = std::move(bundle);
    return response;
  }

 private:
  std::size_t page_count(const operation_call& call) const {
    const std::string* text = call.param("_count");
    if (!text) return options_.default_count;
    std::size_t n = 0;
    auto [end, ec] = std::from_chars(text->data(), text->data() + text->size(), n);
    if (ec != std::errc{} || end != text->data() + text->size() || n == 0)
      throw fhir_failure(400, issue_type::invalid, "_count: expected a positive integer, got '" + *text + "'",
                         "_count");
    return std::min(n, options_.max_count);
  }

  // "_cursor=Type/id": the last entry of the previous page ("", "" before the first).
  static std::pair<std::string, std::string> parse_cursor(const operation_call& call) {
    const std::string* cursor = call.param("_cursor");
    if (!cursor) return {};
    auto slash = cursor->find('/');
    if (slash == std::string::npos || slash == 0 || slash + 1 == cursor->size())
      throw fhir_failure(400, issue_type::invalid, "Invalid paging cursor '" + *cursor + "'", "_cursor");
    return {cursor->substr(0, slash), cursor->substr(slash + 1)};
  }

  resource_store& store_;
  everything_options options_;
  const fhir::definitions& defs_;
  detail::compartment_links links_;
  std::string link_types_;
  std::string link_params_;
  std::string patient_data_types_;
};

}  // namespace

void register_everything(fhir_api& api, resource_store& store, everything_options options,
                         const fhir::definitions& defs) {
  operation_definition op;
  op.name = "everything";
  op.level = operation_level::instance;
  op.types = {"Patient"};
  op.methods = {"GET", "POST"};
  op.definition_url = "http://hl7.org/fhir/OperationDefinition/Patient-everything";
  op.handler = everything_operation(store, options, defs);
  api.add_operation(std::move(op));
}

}  // namespace yilian::gateway
