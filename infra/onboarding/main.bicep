extension microsoftGraphV1

// Onboards one Microsoft 365 tenant: deployed in THAT tenant by one of its administrators.
// Creates the service principal of AuditLake's multi-tenant app registration and grants it the
// Office 365 Management APIs application permissions it needs (the same as admin consent), and
// Microsoft Graph's AuditLogsQuery.Read.All for the Purview audit search backfill where Graph has that API.

@description('Application (client) id of the AuditLake app registration (output apiClientId of the platform deployment).')
param appId string

@description('Content types this tenant is collected for; DLP.All also grants ActivityFeed.ReadDlp.')
param contentTypes array = [
  'Audit.AzureActiveDirectory'
  'Audit.Exchange'
  'Audit.SharePoint'
  'Audit.General'
  'DLP.All'
]

@description('Microsoft 365 cloud of this tenant (Enterprise, GCC, GCCHigh or DoD).')
@allowed(['Enterprise', 'GCC', 'GCCHigh', 'DoD'])
param cloud string = 'Enterprise'

@description('appId of the Office 365 Management APIs service principal (the same in every tenant).')
param managementApiAppId string = 'c5393580-f805-4401-95e8-94b7a6ef2fc2'

@description('id of its ActivityFeed.Read app role: "Read activity data for your organization".')
param activityFeedReadRoleId string = '594c1fb6-4f81-4475-ae41-0c394909246c'

@description('id of its ActivityFeed.ReadDlp app role: "Read DLP policy events including detected sensitive data".')
param activityFeedReadDlpRoleId string = '4807a72c-ad38-4250-94c9-4eabfe26cd55'

// The audit log query API exists in the global Microsoft Graph only, which GCC tenants use too; granting the
// permission in GCC High or DoD would fail (or grant nothing), and the collector skips the search there anyway.
@description('Grant Microsoft Graph AuditLogsQuery.Read.All (the Purview audit search backfill). Default: on for Enterprise and GCC, off for GCCHigh and DoD, which have no audit log query API. Leave off if the platform was deployed with requestAuditSearchPermission=false.')
param grantAuditSearchPermission bool = contains(['Enterprise', 'GCC'], cloud)

@description('appId of Microsoft Graph (the same in every tenant).')
param graphAppId string = '00000003-0000-0000-c000-000000000000'

// Application "Identifier" of AuditLogsQuery.Read.All in Microsoft's Graph permissions reference
// (https://learn.microsoft.com/graph/permissions-reference#auditlogsqueryreadall).
@description('id of Microsoft Graph\'s AuditLogsQuery.Read.All app role: "Read audit logs data from all services".')
param auditLogsQueryReadAllRoleId string = '5e1e9171-754d-478c-812c-f1755a9a4c2d'

// Polling this tenant's Entra ID sign-in and audit logs from Graph (AUDITLAKE_ENTRA_STREAMS on the
// platform) needs both; a tenant that streams them through an Event Hub (entra-diagnostics.bicep) needs neither.
@description('Grant Microsoft Graph AuditLog.Read.All and Directory.Read.All, which polling the Entra ID sign-in and audit logs needs (and an Entra ID P1 or P2 licence). Leave off if the platform does not poll them.')
param grantEntraLogPermission bool = false

@description('id of Microsoft Graph\'s AuditLog.Read.All app role: "Read all audit log data".')
param auditLogReadAllRoleId string = 'b0afded3-3588-46d8-8b3d-9842eff778da'

@description('id of Microsoft Graph\'s Directory.Read.All app role: "Read directory data".')
param directoryReadAllRoleId string = '7ab1d382-f21e-4acd-a863-ba3e13f7da61'

resource managementApi 'Microsoft.Graph/servicePrincipals@v1.0' existing = {
  appId: managementApiAppId
}

// The collector's identity in this tenant.
resource collector 'Microsoft.Graph/servicePrincipals@v1.0' = {
  appId: appId
}

resource activityFeedRead 'Microsoft.Graph/appRoleAssignedTo@v1.0' = {
  principalId: collector.id
  resourceId: managementApi.id
  appRoleId: activityFeedReadRoleId
}

resource activityFeedReadDlp 'Microsoft.Graph/appRoleAssignedTo@v1.0' = if (contains(contentTypes, 'DLP.All')) {
  principalId: collector.id
  resourceId: managementApi.id
  appRoleId: activityFeedReadDlpRoleId
}

// Microsoft Graph's own service principal exists in every tenant, so reading it costs nothing when the grant is off.
resource graph 'Microsoft.Graph/servicePrincipals@v1.0' existing = {
  appId: graphAppId
}

resource auditLogsQueryRead 'Microsoft.Graph/appRoleAssignedTo@v1.0' = if (grantAuditSearchPermission) {
  principalId: collector.id
  resourceId: graph.id
  appRoleId: auditLogsQueryReadAllRoleId
}

resource auditLogRead 'Microsoft.Graph/appRoleAssignedTo@v1.0' = if (grantEntraLogPermission) {
  principalId: collector.id
  resourceId: graph.id
  appRoleId: auditLogReadAllRoleId
}

resource directoryRead 'Microsoft.Graph/appRoleAssignedTo@v1.0' = if (grantEntraLogPermission) {
  principalId: collector.id
  resourceId: graph.id
  appRoleId: directoryReadAllRoleId
}

output tenantId string = tenant().tenantId
output servicePrincipalId string = collector.id
// Append this to the platform deployment's tenants parameter and deploy it again.
output tenantsEntry object = {
  tenantId: tenant().tenantId
  contentTypes: contentTypes
  cloud: cloud
}
