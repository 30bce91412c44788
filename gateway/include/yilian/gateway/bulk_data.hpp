// Pull-down and bulk: Patient/[id]/$everything, FHIR Bulk Data $export (kick-off, status,
// files, cancel) with the background job runner that produces the NDJSON, and the NDJSON bulk
// load ($import and `yilian import`) that takes an export back in.
//
// The operations register with fhir_api::add_operation. Export jobs and their files live in
// PostgreSQL (export_job, export_file), so any gateway process sharing the database may run a job,
// report its status or serve its files; a job is claimed with a lease and taken over by another
// runner when its runner dies.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "yilian/fhir/definitions.hpp"
#include "yilian/fhir/issues.hpp"
#include "yilian/gateway/fhir_api.hpp"
#include "yilian/gateway/resource_store.hpp"

namespace yilian::gateway {

struct everything_options {
  std::size_t default_count = 50;
  std::size_t max_count = 1000;
};

// GET/POST Patient/[id]/$everything: the patient, its Patient compartment (the official
// CompartmentDefinition's parameters, through the reference index) and the shared resources those
// reference (Practitioner, Organization, Medication, Location...; never another patient's data),
// with _since, _type and _count pages linked by a keyset cursor.
void register_everything(fhir_api& api, resource_store& store, everything_options options = {},
                         const fhir::definitions& defs = fhir::definitions::r4());

struct bulk_export_options {
  std::size_t max_file_bytes = 64 * 1024 * 1024;  // an NDJSON file is split beyond this size
  std::chrono::seconds expiry{3600};              // completed/failed jobs and files are deleted after
  std::chrono::seconds lease{60};                 // a runner's claim on a job, renewed while it works
  std::chrono::milliseconds poll_interval{1000};  // how often an idle runner looks for queued jobs
  std::size_t fetch_rows = 500;                   // rows per FETCH from the export cursor
  std::chrono::seconds retry_after{2};            // Retry-After on status answers while in progress
};

// Kick-off ($export at system level, Patient/$export, Group/[id]/$export), status and cancel
// ($export-status/<job>, GET and DELETE) and the files ($export-file/<job>/<n>).
void register_bulk_export(fhir_api& api, resource_store& store, bulk_export_options options = {},
                          const fhir::definitions& defs = fhir::definitions::r4());

// Runs queued export jobs on a thread of its own with its own PostgreSQL connections (a long export
// never holds a request worker's connection). The export reads one REPEATABLE READ snapshot through
// a server-side cursor, `fetch_rows` rows at a time, and writes each NDJSON file when it reaches
// `max_file_bytes`: memory stays bounded whatever the database size.
class export_runner {
 public:
  export_runner(std::string database_url, bulk_export_options options = {},
                const fhir::definitions& defs = fhir::definitions::r4());
  ~export_runner();
  export_runner(const export_runner&) = delete;
  export_runner& operator=(const export_runner&) = delete;

  void start();
  // Stops the thread; a job in progress is put back in the queue (its partial files deleted) for
  // any runner to start again.
  void stop();

  // Claims one queued job, or a running job whose lease has expired, and runs it to its end.
  // Returns false when there was none. (The thread calls it; tests call it directly.)
  bool run_once();
  // Deletes jobs (and their files) past their expiry; returns how many.
  std::size_t remove_expired();

  const std::string& name() const noexcept { return name_; }

 private:
  struct job;
  void loop();
  void run_job(job& j);

  std::string url_;
  bulk_export_options options_;
  const fhir::definitions& defs_;
  std::string name_;                               // leased_by: host, pid and a random suffix
  std::shared_ptr<pqxx::connection_base> claims_;  // kept between polls; reopened after a failure
  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<bool> stopping_{false};  // also read by a running job, which then hands it back
  std::thread thread_;
};

struct bulk_import_options {
  std::size_t chunk_lines = 500;  // lines written per database transaction (resource_store::put_all)
};

// Outcome of a bulk load: per-line errors (location "line N", file-prefixed for files) and counts.
struct import_report {
  std::size_t lines = 0;    // non-blank lines seen
  std::size_t created = 0;  // first versions written
  std::size_t updated = 0;
  std::size_t rejected = 0;
  fhir::issue_list issues;
};

// Bulk load of NDJSON: each line a resource with an id, validated like a REST write and stored
// with that id (update or create), in chunks of `chunk_lines`; invalid lines are reported and the
// valid ones kept.
class ndjson_importer {
 public:
  ndjson_importer(resource_store& store, request_context context, bulk_import_options options = {},
                  const fhir::definitions& defs = fhir::definitions::r4());
  // `where` names the line in reports ("line 12", "a.ndjson line 12").
  void add_line(std::string_view line, std::string where);
  // Writes what is pending; call at the end.
  void finish();
  const import_report& report() const noexcept { return report_; }

 private:
  struct pending_line {
    std::string where;
    std::string type;
    std::string id;
    fhir::value resource;
  };
  void write_chunk();

  resource_store& store_;
  request_context context_;
  bulk_import_options options_;
  const fhir::definitions& defs_;
  std::vector<pending_line> pending_;
  import_report report_;
};

// POST [base]/$import with an application/fhir+ndjson body; answers an OperationOutcome with the
// counts and one issue per rejected line.
void register_bulk_import(fhir_api& api, resource_store& store, bulk_import_options options = {},
                          const fhir::definitions& defs = fhir::definitions::r4());

}  // namespace yilian::gateway
