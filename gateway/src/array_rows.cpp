#include <pqxx/pqxx>

#include "store_internal.hpp"

namespace yilian::gateway::detail {

array_rows::array_rows(std::string table, std::vector<std::pair<std::string, std::string>> columns)
    : table_(std::move(table)), columns_(std::move(columns)), literals_(columns_.size(), "{") {}

void array_rows::add(std::initializer_list<std::optional<std::string_view>> values) {
  if (values.size() != columns_.size()) throw std::logic_error("array_rows::add: wrong number of values for " + table_);
  std::size_t k = 0;
  for (const auto& v : values) {
    std::string& out = literals_[k++];
    if (rows_) out += ',';
    if (!v) {
      out += "NULL";
      continue;
    }
    out += '"';
    for (char ch : *v) {
      if (ch == '"' || ch == '\\') out += '\\';
      out += ch;
    }
    out += '"';
  }
  ++rows_;
}

std::string array_rows::unnest_arguments() const {
  std::string out;
  for (std::size_t i = 0; i < columns_.size(); ++i)
    out += (i ? ", $" : "$") + std::to_string(i + 2) + "::" + columns_[i].second + "[]";
  return out;
}

std::vector<std::string> array_rows::parameters(const std::string& tenant) const {
  std::vector<std::string> params{tenant};
  for (const auto& literal : literals_) params.push_back(literal + "}");
  return params;
}

void array_rows::insert(pqxx::transaction_base& tx, const std::string& tenant) const {
  if (rows_ == 0) return;
  std::string names;
  for (const auto& [name, type] : columns_) names += ", " + name;
  tx.exec_params("INSERT INTO " + table_ + " (tenant" + names + ") SELECT $1, * FROM unnest(" + unnest_arguments() + ")",
                 pqxx::prepare::make_dynamic_params(parameters(tenant)));
}

}  // namespace yilian::gateway::detail
