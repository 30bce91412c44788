// File adapter: stores FHIR resources from files (JSON, XML or NDJSON; a Bundle's entries one by
// one) into the store, validated like any REST write. Used for demo data (`yilian serve --load`)
// and for a member's initial load. Resources with an id are stored with update semantics (PUT),
// so loading the same files twice does not duplicate anything.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>
#include <vector>

#include "yilian/gateway/resource_store.hpp"

namespace yilian::adapters {

struct load_report {
  std::size_t stored = 0;
  std::size_t unchanged = 0;  // identical content already stored (no new version written)
  std::size_t rejected = 0;
  std::vector<std::string> errors;  // "file: Patient/x: Patient.birthDate: invalid date"
};

// `path` is a file or a folder (its *.json, *.xml and *.ndjson files, sorted by name).
load_report load_fhir_files(gateway::resource_store& store, const gateway::request_context& ctx,
                            const std::filesystem::path& path);

}  // namespace yilian::adapters
