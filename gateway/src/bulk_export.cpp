// FHIR Bulk Data export (Bulk Data Access IG v2): the kick-off, status, cancel and file operations
// answer from the export_job/export_file tables; export_runner produces the files.
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <ctime>
#include <iostream>
#include <pqxx/pqxx>
#include <random>

#include "bulk_internal.hpp"
#include "yilian/fhir/json.hpp"
#include "yilian/gateway/bulk_data.hpp"

namespace yilian::gateway {
namespace {

using fhir::issue_type;
using fhir::value;

constexpr const char* instant_of_time_sql = R"(to_char(%s AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))";

std::string instant_sql(const char* column) {
  char buf[160];
  std::snprintf(buf, sizeof buf, instant_of_time_sql, column);
  return buf;
}

std::string random_hex(std::size_t length) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < length; ++i) out += hex[rng() & 15];
  return out;
}

std::string http_date(std::int64_t epoch_seconds) {
  std::time_t t = static_cast<std::time_t>(epoch_seconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
  return buf;
}

// --- kick-off ------------------------------------------------------------------------------------

class export_kickoff {
 public:
  export_kickoff(resource_store& store, const fhir::definitions& defs, std::string level)
      : store_(store), defs_(defs), level_(std::move(level)), patient_types_(detail::patient_data_types(defs)) {}

  operation_response operator()(const operation_call& call) const {
    std::string_view prefer = call.request.header("Prefer");
    if (prefer.find("respond-async") == std::string_view::npos)
      throw fhir_failure(400, issue_type::invalid, "$export is asynchronous: send the header 'Prefer: respond-async'");
    if (const std::string* format = call.param("_outputFormat")) {
      if (*format != "application/fhir+ndjson" && *format != "application/ndjson" && *format != "ndjson")
        throw fhir_failure(400, issue_type::not_supported,
                           "_outputFormat '" + *format + "' is not supported; use application/fhir+ndjson",
                           "_outputFormat");
    }
    bool lenient = prefer.find("handling=lenient") != std::string_view::npos;
    for (const char* unsupported : {"_typeFilter", "patient", "includeAssociatedData", "_elements"})
      if (call.param(unsupported) && !lenient)
        throw fhir_failure(
            400, issue_type::not_supported,
            std::string(unsupported) + " is not supported by this server (Prefer: handling=lenient ignores it)",
            unsupported);
    std::vector<std::string> types = detail::parse_type_param(call, defs_);
    std::string since = detail::parse_since_param(call);
    if (level_ != "system")
      for (const auto& type : types)
        if (!std::binary_search(patient_types_.begin(), patient_types_.end(), type))
          throw fhir_failure(
              400, issue_type::invalid,
              "_type: " + type + " is not in the Patient compartment, so a " + level_ + "-level export has none",
              "_type");
    if (level_ == "group") {
      auto group = store_.read(call.context, "Group", call.id);
      if (!group || group->deleted)
        throw fhir_failure(404, issue_type::not_found, "Group/" + call.id + " is not known");
    }

    std::string path = level_ == "system"    ? "$export"
                       : level_ == "patient" ? "Patient/$export"
                                             : "Group/" + call.id + "/$export";
    std::string request_url = call.base_url + "/" + path;
    if (auto q = call.request.target.find('?'); q != std::string::npos) request_url += call.request.target.substr(q);

    std::string job_id = random_hex(32);
    {
      auto conn = store_.acquire();
      pqxx::work tx(*conn);
      std::vector<std::string> params{call.context.tenant,       job_id, request_url, level_, call.id,
                                      detail::text_array(types), since};
      tx.exec_params(
          "INSERT INTO export_job (tenant, job_id, status, request_url, level, group_id, types, since, progress) "
          "VALUES ($1, $2, 'queued', $3, $4, NULLIF($5, ''), "
          "CASE WHEN cardinality($6::text[]) = 0 THEN NULL ELSE $6::text[] END, NULLIF($7, '')::timestamptz, "
          "'queued')",
          pqxx::prepare::make_dynamic_params(params));
      tx.commit();
    }
    operation_response response;
    response.status = 202;
    response.headers.push_back({"Content-Location", call.base_url + "/$export-status/" + job_id});
    fhir::issue_list info;
    info.add(fhir::severity::information, issue_type::informational,
             "Export job " + job_id + " accepted; poll " + call.base_url + "/$export-status/" + job_id);
    response.resource = fhir::to_operation_outcome(info);
    return response;
  }

 private:
  resource_store& store_;
  const fhir::definitions& defs_;
  std::string level_;
  std::vector<std::string> patient_types_;
};

// --- status, cancel, files -------------------------------------------------------------------------

class export_status {
 public:
  export_status(resource_store& store, bulk_export_options options) : store_(store), options_(options) {}

  operation_response operator()(const operation_call& call) const {
    if (call.tail.size() != 1)
      throw fhir_failure(404, issue_type::not_found, "Expected [base]/$export-status/<job id>");
    const std::string& job_id = call.tail[0];
    return call.request.method == "DELETE" ? cancel(call, job_id) : status(call, job_id);
  }

 private:
  operation_response status(const operation_call& call, const std::string& job_id) const {
    auto conn = store_.acquire();
    pqxx::read_transaction tx(*conn);
    auto job = tx.exec_params("SELECT status, coalesce(progress, ''), coalesce(error, ''), request_url, " +
                                  instant_sql("transaction_time") +
                                  ", coalesce(extract(epoch FROM expires_at)::bigint, 0) "
                                  "FROM export_job WHERE tenant = $1 AND job_id = $2",
                              call.context.tenant, job_id);
    if (job.empty()) throw fhir_failure(404, issue_type::not_found, "Export job " + job_id + " is not known");
    std::string state = job[0][0].c_str();
    operation_response response;
    if (state == "queued" || state == "running") {
      response.status = 202;
      response.headers.push_back({"X-Progress", job[0][1].c_str()});
      response.headers.push_back({"Retry-After", std::to_string(options_.retry_after.count())});
      return response;
    }
    if (state != "completed")
      throw fhir_failure(500, issue_type::exception, "Export job " + job_id + " failed: " + job[0][2].c_str());

    value manifest = value::make_object();
    manifest.set("transactionTime", value::make_string(job[0][4].c_str()));
    manifest.set("request", value::make_string(job[0][3].c_str()));
    manifest.set("requiresAccessToken", value::make_boolean(false));
    value output = value::make_array();
    for (const auto& row : tx.exec_params("SELECT file_no, res_type, line_count FROM export_file "
                                          "WHERE tenant = $1 AND job_id = $2 ORDER BY file_no",
                                          call.context.tenant, job_id)) {
      value file = value::make_object();
      file.set("type", value::make_string(row[1].c_str()));
      file.set("url", value::make_string(call.base_url + "/$export-file/" + job_id + "/" + row[0].c_str()));
      file.set("count", value::make_number(row[2].c_str()));
      output.push_back(std::move(file));
    }
    manifest.set("output", std::move(output));
    manifest.set("error", value::make_array());
    response.body = fhir::to_json(manifest);
    response.content_type = "application/json";
    if (auto expires = job[0][5].as<std::int64_t>(); expires > 0)
      response.headers.push_back({"Expires", http_date(expires)});
    return response;
  }

  operation_response cancel(const operation_call& call, const std::string& job_id) const {
    auto conn = store_.acquire();
    pqxx::work tx(*conn);
    auto removed = tx.exec_params("DELETE FROM export_job WHERE tenant = $1 AND job_id = $2 RETURNING status",
                                  call.context.tenant, job_id);
    if (removed.empty()) throw fhir_failure(404, issue_type::not_found, "Export job " + job_id + " is not known");
    tx.exec_params("DELETE FROM export_file WHERE tenant = $1 AND job_id = $2", call.context.tenant, job_id);
    tx.commit();
    operation_response response;
    response.status = 202;
    fhir::issue_list info;
    info.add(fhir::severity::information, issue_type::informational,
             "Export job " + job_id + " (" + removed[0][0].c_str() + ") cancelled; its files are deleted");
    response.resource = fhir::to_operation_outcome(info);
    return response;
  }

  resource_store& store_;
  bulk_export_options options_;
};

class export_file_download {
 public:
  explicit export_file_download(resource_store& store) : store_(store) {}

  operation_response operator()(const operation_call& call) const {
    int file_no = 0;
    if (call.tail.size() == 2) {
      const std::string& n = call.tail[1];
      auto [end, ec] = std::from_chars(n.data(), n.data() + n.size(), file_no);
      if (ec != std::errc{} || end != n.data() + n.size()) file_no = 0;
    }
    if (file_no <= 0) throw fhir_failure(404, issue_type::not_found, "Expected [base]/$export-file/<job id>/<file>");
    auto conn = store_.acquire();
    pqxx::read_transaction tx(*conn);
    auto file = tx.exec_params(
        "SELECT f.body FROM export_file f JOIN export_job j ON j.tenant = f.tenant AND j.job_id = f.job_id "
        "WHERE f.tenant = $1 AND f.job_id = $2 AND f.file_no = $3 AND j.status = 'completed'",
        call.context.tenant, call.tail[0], file_no);
    if (file.empty())
      throw fhir_failure(404, issue_type::not_found,
                         "No file " + call.tail[1] + " of a completed export job " + call.tail[0]);
    operation_response response;
    response.body.assign(file[0][0].c_str(), file[0][0].size());
    response.content_type = "application/fhir+ndjson";
    return response;
  }

 private:
  resource_store& store_;
};

// Thrown inside a running job when its row says it is no longer ours (cancelled or taken over).
struct job_abandoned {};
// Thrown inside a running job when its runner stops (gateway shutdown).
struct job_handed_back {};

}  // namespace

void register_bulk_export(fhir_api& api, resource_store& store, bulk_export_options options,
                          const fhir::definitions& defs) {
  const std::string definition = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/";
  api.add_operation(
      {"export", operation_level::system, {}, {"GET"}, definition + "export", export_kickoff(store, defs, "system")});
  api.add_operation({"export",
                     operation_level::type,
                     {"Patient"},
                     {"GET"},
                     definition + "patient-export",
                     export_kickoff(store, defs, "patient")});
  api.add_operation({"export",
                     operation_level::instance,
                     {"Group"},
                     {"GET"},
                     definition + "group-export",
                     export_kickoff(store, defs, "group")});
  api.add_operation(
      {"export-status", operation_level::system, {}, {"GET", "DELETE"}, "", export_status(store, options)});
  api.add_operation({"export-file", operation_level::system, {}, {"GET"}, "", export_file_download(store)});
}

// --- runner ------------------------------------------------------------------------------------------

struct export_runner::job {
  std::string tenant;
  std::string id;
  std::string level;  // system | patient | group
  std::string group_id;
  std::vector<std::string> types;
  std::string since;  // "" = all
};

namespace {

// Appends fetched bodies to an NDJSON file and stores the file when the next line would pass the
// size limit (a single larger resource gets a file of its own); renews the lease now and then.
class file_writer {
 public:
  file_writer(pqxx::connection_base& control, const std::string& tenant, const std::string& job_id,
              const std::string& runner, const bulk_export_options& options)
      : control_(control), tenant_(tenant), job_id_(job_id), runner_(runner), options_(options) {}

  void begin_type(const std::string& type) {
    flush();
    type_ = type;
  }

  void add(const char* body, std::size_t size) {
    if (!buffer_.empty() && buffer_.size() + size + 1 > options_.max_file_bytes) flush();
    buffer_.append(body, size);
    buffer_ += '\n';
    ++lines_;
    ++total_;
  }

  // Stores the pending file (if any) with the progress, under the job's row lock.
  void flush() {
    if (buffer_.empty()) return;
    pqxx::work tx(control_);
    hold_lease(tx);
    ++file_no_;
    tx.exec_params(
        "INSERT INTO export_file (tenant, job_id, file_no, res_type, line_count, body) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        tenant_, job_id_, file_no_, type_, static_cast<long long>(lines_), buffer_);
    tx.commit();
    buffer_.clear();
    buffer_.shrink_to_fit();
    lines_ = 0;
    last_renewal_ = std::chrono::steady_clock::now();
  }

  // Progress and lease, at most once a second.
  void heartbeat() {
    auto now = std::chrono::steady_clock::now();
    if (now - last_renewal_ < std::chrono::seconds(1)) return;
    pqxx::work tx(control_);
    hold_lease(tx);
    tx.commit();
    last_renewal_ = now;
  }

  std::size_t total() const noexcept { return total_; }

 private:
  void hold_lease(pqxx::work& tx) {
    auto r = tx.exec_params(
        "UPDATE export_job SET leased_until = now() + make_interval(secs => $4), progress = $5 "
        "WHERE tenant = $1 AND job_id = $2 AND leased_by = $3 AND status = 'running' RETURNING 1",
        tenant_, job_id_, runner_, static_cast<long long>(options_.lease.count()),
        std::to_string(total_) + " resources written (" + type_ + ")");
    if (r.empty()) throw job_abandoned{};
  }

  pqxx::connection_base& control_;
  const std::string& tenant_;
  const std::string& job_id_;
  const std::string& runner_;
  const bulk_export_options& options_;
  std::string type_;
  std::string buffer_;
  std::size_t lines_ = 0;
  std::size_t total_ = 0;
  int file_no_ = 0;
  std::chrono::steady_clock::time_point last_renewal_ = std::chrono::steady_clock::now();
};

// The statement that selects one type's resources for the job's level, with its parameters:
// tenant, type, since, then (patient and group levels) the type's Patient compartment parameters
// and (group level) the member patients.
std::string export_sql(const std::string& level, const std::string& type, const std::vector<std::string>& links,
                       const std::string& members, std::vector<std::string>& params) {
  std::string sql =
      "SELECT c.body FROM resource_current c WHERE c.tenant = $1 AND c.res_type = $2 AND NOT c.deleted "
      "AND c.last_updated >= $3::timestamptz";
  if (level == "system") return sql;
  auto add = [&](std::string value) {
    params.push_back(std::move(value));
    return "$" + std::to_string(params.size());
  };
  if (type == "Patient") return level == "group" ? sql + " AND c.res_id = ANY(" + add(members) + "::text[])" : sql;
  sql +=
      " AND EXISTS (SELECT 1 FROM index_reference i WHERE i.tenant = c.tenant AND i.res_type = c.res_type "
      "AND i.res_id = c.res_id AND i.target_type = 'Patient' AND i.param = ANY(" +
      add(detail::text_array(links)) + "::text[])";
  if (level == "group") sql += " AND i.target_id = ANY(" + add(members) + "::text[])";
  return sql + ")";
}

}  // namespace

export_runner::export_runner(std::string database_url, bulk_export_options options, const fhir::definitions& defs)
    : url_(std::move(database_url)), options_(options), defs_(defs) {
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  name_ = std::string(host) + ":" + std::to_string(getpid()) + ":" + random_hex(8);
}

export_runner::~export_runner() {
  stop();
}

void export_runner::start() {
  std::lock_guard lock(mutex_);
  if (thread_.joinable()) return;
  stopping_ = false;
  thread_ = std::thread([this] { loop(); });
}

void export_runner::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void export_runner::loop() {
  auto next_cleanup = std::chrono::steady_clock::now();
  for (;;) {
    bool worked = false;
    try {
      if (std::chrono::steady_clock::now() >= next_cleanup) {
        remove_expired();
        next_cleanup = std::chrono::steady_clock::now() + std::chrono::minutes(1);
      }
      worked = run_once();
    } catch (const std::exception& e) {
      std::cerr << "export runner " << name_ << ": " << e.what() << std::endl;
    }
    std::unique_lock lock(mutex_);
    if (stopping_) return;
    if (!worked) wake_.wait_for(lock, options_.poll_interval, [this] { return stopping_.load(); });
    if (stopping_) return;
  }
}

std::size_t export_runner::remove_expired() {
  pqxx::connection conn(url_);
  pqxx::work tx(conn);
  tx.exec(
      "DELETE FROM export_file f USING export_job j WHERE j.tenant = f.tenant AND j.job_id = f.job_id "
      "AND j.expires_at < now()");
  auto removed = tx.exec("DELETE FROM export_job WHERE expires_at < now()");
  tx.commit();
  return removed.affected_rows();
}

bool export_runner::run_once() {
  job j;
  try {
    if (!claims_ || !claims_->is_open()) claims_ = std::make_shared<pqxx::connection>(url_);
    pqxx::work tx(*claims_);
    auto claimed = tx.exec_params(
        "UPDATE export_job j SET status = 'running', leased_by = $1, leased_until = now() + make_interval(secs => $2), "
        "progress = 'started', error = NULL "
        "WHERE (j.tenant, j.job_id) = (SELECT tenant, job_id FROM export_job "
        "  WHERE status = 'queued' OR (status = 'running' AND leased_until < now()) "
        "  ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) "
        "RETURNING j.tenant, j.job_id, j.level, coalesce(j.group_id, ''), coalesce(array_to_string(j.types, ','), ''), "
        "coalesce(j.since::text, '')",
        name_, static_cast<long long>(options_.lease.count()));
    if (claimed.empty()) return false;
    const auto& row = claimed[0];
    j.tenant = row[0].c_str();
    j.id = row[1].c_str();
    j.level = row[2].c_str();
    j.group_id = row[3].c_str();
    j.types = detail::split_commas(row[4].c_str());
    j.since = row[5].c_str();
    // Files a previous runner of this job wrote before it died.
    tx.exec_params("DELETE FROM export_file WHERE tenant = $1 AND job_id = $2", j.tenant, j.id);
    tx.commit();
  } catch (...) {
    claims_.reset();
    throw;
  }
  run_job(j);
  return true;
}

void export_runner::run_job(job& j) {
  pqxx::connection control(url_);
  try {
    pqxx::connection reader(url_);
    pqxx::transaction<pqxx::repeatable_read, pqxx::read_only> snapshot(reader);
    std::string transaction_time = snapshot.exec("SELECT " + instant_sql("now()"))[0][0].c_str();

    std::vector<std::string> members;
    if (j.level == "group") {
      auto group = snapshot.exec_params(
          "SELECT 1 FROM resource_current WHERE tenant = $1 AND res_type = 'Group' AND res_id = $2 AND NOT deleted",
          j.tenant, j.group_id);
      if (group.empty()) throw std::runtime_error("Group/" + j.group_id + " no longer exists");
      for (const auto& row : snapshot.exec_params(
               "SELECT DISTINCT target_id FROM index_reference WHERE tenant = $1 AND res_type = 'Group' "
               "AND res_id = $2 AND param = 'member' AND target_type = 'Patient' AND target_id <> ''",
               j.tenant, j.group_id))
        members.emplace_back(row[0].c_str());
    }
    std::vector<std::string> types = j.types;
    if (types.empty()) types = j.level == "system" ? defs_.resource_types() : detail::patient_data_types(defs_);
    std::string members_array = detail::text_array(members);

    file_writer writer(control, j.tenant, j.id, name_, options_);
    for (const auto& type : types) {
      std::vector<std::string> compartment_params;
      if (j.level != "system") {
        if (const auto* params = defs_.compartment_params("Patient", type)) compartment_params = *params;
        if (compartment_params.empty() && type != "Patient") continue;
      }
      writer.begin_type(type);
      std::vector<std::string> params{j.tenant, type, j.since.empty() ? "-infinity" : j.since};
      std::string sql = export_sql(j.level, type, compartment_params, members_array, params);
      snapshot.exec_params("DECLARE export_rows NO SCROLL CURSOR FOR " + sql,
                           pqxx::prepare::make_dynamic_params(params));
      // Fewer rows per FETCH when resources are large (attachments): about 8 MB per batch.
      constexpr std::size_t batch_bytes = 8 * 1024 * 1024;
      std::size_t rows_per_fetch = std::min<std::size_t>(options_.fetch_rows, 50);
      for (;;) {
        auto batch = snapshot.exec("FETCH FORWARD " + std::to_string(rows_per_fetch) + " FROM export_rows");
        if (batch.empty()) break;
        std::size_t bytes = 0;
        for (const auto& row : batch) {
          writer.add(row[0].c_str(), row[0].size());
          bytes += row[0].size();
        }
        std::size_t average = std::max<std::size_t>(1, bytes / batch.size());
        rows_per_fetch = std::clamp<std::size_t>(batch_bytes / average, 1, options_.fetch_rows);
        writer.heartbeat();
        if (stopping_) throw job_handed_back{};
      }
      snapshot.exec("CLOSE export_rows");
    }
    writer.begin_type({});  // stores the last file
    snapshot.commit();

    pqxx::work tx(control);
    tx.exec_params(
        "UPDATE export_job SET status = 'completed', transaction_time = $4::timestamptz, finished_at = now(), "
        "expires_at = now() + make_interval(secs => $5), progress = $6, leased_by = NULL, leased_until = NULL "
        "WHERE tenant = $1 AND job_id = $2 AND leased_by = $3 AND status = 'running' RETURNING 1",
        j.tenant, j.id, name_, transaction_time, static_cast<long long>(options_.expiry.count()),
        "completed: " + std::to_string(writer.total()) + " resources");
    tx.commit();
  } catch (const job_handed_back&) {
    pqxx::work tx(control);
    auto ours = tx.exec_params(
        "UPDATE export_job SET status = 'queued', progress = 'queued', leased_by = NULL, leased_until = NULL "
        "WHERE tenant = $1 AND job_id = $2 AND leased_by = $3 RETURNING 1",
        j.tenant, j.id, name_);
    if (!ours.empty()) tx.exec_params("DELETE FROM export_file WHERE tenant = $1 AND job_id = $2", j.tenant, j.id);
    tx.commit();
  } catch (const job_abandoned&) {
    // Cancelled (its row and files are gone) or taken over by another runner: nothing to record.
  } catch (const pqxx::broken_connection&) {
    throw;  // the lease expires and a runner takes the job over
  } catch (const std::exception& e) {
    std::cerr << "export job " << j.id << " failed: " << e.what() << std::endl;
    pqxx::work tx(control);
    tx.exec_params(
        "DELETE FROM export_file WHERE tenant = $1 AND job_id = $2 AND EXISTS (SELECT 1 FROM export_job "
        "WHERE tenant = $1 AND job_id = $2 AND leased_by = $3)",
        j.tenant, j.id, name_);
    tx.exec_params(
        "UPDATE export_job SET status = 'failed', error = $4, finished_at = now(), "
        "expires_at = now() + make_interval(secs => $5), leased_by = NULL, leased_until = NULL "
        "WHERE tenant = $1 AND job_id = $2 AND leased_by = $3",
        j.tenant, j.id, name_, std::string(e.what()), static_cast<long long>(options_.expiry.count()));
    tx.commit();
  }
}

}  // namespace yilian::gateway
