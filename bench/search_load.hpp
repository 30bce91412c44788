// Loads the search benchmark's data set through resource_store, one transaction per resource as
// a client's PUTs would, from several threads. Header-only like search_dataset.hpp.
#pragma once

#include <atomic>
#include <chrono>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "search_dataset.hpp"
#include "yilian/gateway/resource_store.hpp"

namespace yilian::bench {

struct load_result {
  std::size_t resources = 0;
  double seconds = 0;
  double per_second() const { return seconds > 0 ? static_cast<double>(resources) / seconds : 0; }
};

// Writes the Organizations (when `with_organizations`) and patients [first, last) with their
// Encounters and Observations, patient by patient from `threads` threads. Rethrows the first
// failure after all threads stopped. `progress` (may be empty) is called now and then with the
// resources written so far, from one of the loading threads.
template <class Progress>
load_result load_dataset(gateway::resource_store& store, const dataset_config& config, std::size_t first,
                         std::size_t last, unsigned threads, bool with_organizations, Progress&& progress) {
  const gateway::request_context context;
  const auto start = std::chrono::steady_clock::now();
  std::atomic<std::size_t> written{0};
  if (with_organizations) {
    for (std::size_t h = 0; h < hospitals.size(); ++h) {
      store.update(context, "Organization", organization_id(h), organization_resource(h));
      ++written;
    }
  }
  std::atomic<std::size_t> next{first};
  std::atomic<bool> failed{false};
  std::exception_ptr failure;
  std::mutex failure_mutex;
  auto worker = [&] {
    try {
      for (std::size_t i = next++; i < last && !failed; i = next++) {
        const patient_facts p = patient_facts_of(config, i);
        store.update(context, "Patient", p.id, patient_resource(p));
        for (std::size_t j = 0; j < encounters_per_patient; ++j)
          store.update(context, "Encounter", encounter_id(i, j), encounter_resource(config, p, j));
        for (std::size_t k = 0; k < config.observations_per_patient; ++k) {
          const observation_facts o = observation_facts_of(config, i, k, p.hospital);
          store.update(context, "Observation", observation_id(i, k), observation_resource(o));
        }
        const std::size_t after = written.fetch_add(resources_per_patient(config)) + resources_per_patient(config);
        if ((after - resources_per_patient(config)) / 10'000 != after / 10'000) progress(after);
      }
    } catch (...) {
      std::lock_guard lock(failure_mutex);
      if (!failure) failure = std::current_exception();
      failed = true;
    }
  };
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < (threads == 0 ? 1 : threads); ++t) pool.emplace_back(worker);
  for (auto& t : pool) t.join();
  if (failure) std::rethrow_exception(failure);
  return {written.load(), std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()};
}

}  // namespace yilian::bench
