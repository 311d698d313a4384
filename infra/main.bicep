// AuditLake platform: one deployment per collector, into a resource group of the tenant that
// hosts it. Wires infra/modules only; each monitored Microsoft 365 tenant is then onboarded
// with infra/onboarding (see infra/README.md). `azd up` deploys this file too (azure.yaml).

@description('Azure region of every resource (Flex Consumption must be offered there).')
param location string = resourceGroup().location

@description('Prefix of resource names: lower-case letters, digits and hyphens, starting with a letter; a short hash of the resource group makes them unique.')
@minLength(2)
@maxLength(10)
param namePrefix string = 'auditlake'

@description('Tags applied to every resource.')
param tags object = {}

@description('Tenants to collect: [{"tenantId": GUID, "contentTypes": [...] (default all five), "cloud": "Enterprise|GCC|GCCHigh|DoD" (default: cloud)}]. Becomes AUDITLAKE_TENANTS.')
@minLength(1)
param tenants array

@description('Default Microsoft 365 cloud of the tenants (AUDITLAKE_CLOUD): selects the Management API root, token authority and audience.')
@allowed(['Enterprise', 'GCC', 'GCCHigh', 'DoD'])
param cloud string = 'Enterprise'

@description('PublisherIdentifier sent on every API call (AUDITLAKE_PUBLISHER_ID): your own tenant, so requests use your quota.')
param publisherId string = tenant().tenantId

@description('How the collector authenticates to the Management Activity API: federated (the app registration trusts the managed identity; no secret) or secret (a client secret in Key Vault).')
@allowed(['federated', 'secret'])
param authMode string = 'federated'

@description('Create the multi-tenant app registration with the Microsoft Graph Bicep extension. False: give appId of an existing one (and add its federated credential yourself).')
param createAppRegistration bool = true

@description('Application (client) id of an existing multi-tenant app registration (createAppRegistration false).')
param appId string = ''

@description('Display name of the app registration created here.')
param appDisplayName string = 'AuditLake collector'

@description('Declare ActivityFeed.ReadDlp on the app registration (tenants that collect DLP.All need it).')
param requestDlpPermission bool = true

// Only the global Microsoft Graph has the Purview audit log query API (the API reference lists the global service
// alone); GCC tenants use the global Graph, GCC High (US Government L4) and DoD (L5) do not.
@description('Declare the Microsoft Graph AuditLogsQuery.Read.All application permission on the app registration (the Purview audit search backfill). Default: on for the Enterprise and GCC clouds, off for GCCHigh and DoD, where the API does not exist.')
param requestAuditSearchPermission bool = contains(['Enterprise', 'GCC'], cloud)

@description('Reply address of the app registration: where the admin-consent URL lands the administrator afterwards.')
param consentRedirectUri string = '${environment().portal}/'

// authMode has no 'certificate': the code reads AZURE_CLIENT_CERTIFICATE_PATH, but Flex
// Consumption cannot load certificates (WEBSITE_LOAD_CERTIFICATES and Key Vault certificates
// are not supported there), and federated needs no credential at all.

@description('Name of the Key Vault secret that holds the client secret (authMode secret).')
param clientSecretName string = 'management-api-client-secret'

@description('Timer schedule, six-field NCRONTAB (COLLECT_SCHEDULE).')
param collectSchedule string = '0 */2 * * * *'

// Daily: day D is searched on D+2 at 03:30 UTC, once Purview had a day to index it.
@description('Purview audit search timer, six-field NCRONTAB in UTC (SEARCH_SCHEDULE).')
param searchSchedule string = '0 30 3 * * *'

@description('Days of history the Purview audit search backfill keeps whole (AUDITLAKE_SEARCH_HISTORY_DAYS; 180 = Purview Audit Standard retention).')
@minValue(2)
param searchHistoryDays int = 180

@description('Entra ID log polling timer, six-field NCRONTAB in UTC (ENTRA_SCHEDULE).')
param entraSchedule string = '0 */5 * * * *'

@description('Entra ID logs the Functions app polls from Microsoft Graph (AUDITLAKE_ENTRA_STREAMS), for tenants whose logs cannot stream through entraStreaming: entra (all five), or a comma list of signins, noninteractive, serviceprincipal, managedidentity, directoryaudits; empty for none. Needs AuditLog.Read.All and Entra ID P1/P2 in each tenant.')
param entraStreams string = ''

@description('Resource id of an existing ADX cluster to use; empty creates a new cluster.')
param adxClusterResourceId string = ''

@description('SKU of a new ADX cluster.')
param adxSkuName string = 'Dev(No SLA)_Standard_E2a_v4'

@description('Instances of a new ADX cluster.')
@minValue(1)
param adxCapacity int = 1

@description('ADX database name (ADX_DATABASE).')
param adxDatabaseName string = 'auditlake'

@description('Days ADX keeps data (database soft-delete period; 3650 = 10 years).')
@minValue(1)
param adxRetentionDays int = 3650

@description('Days of data ADX keeps in hot cache.')
@minValue(0)
param adxHotCacheDays int = 31

@description('Managed streaming ingestion (ADX_STREAMING): fresher data; a new cluster is created with streaming ingestion on.')
param adxStreaming bool = false

@description('Most instances the function app scales to (Flex Consumption: at least 40).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Memory of one function app instance.')
@allowed([512, 2048, 4096])
param instanceMemoryMB int = 2048

@description('Object id of an Entra ID group given Database Viewer on the ADX database (analysts: query, change nothing); empty: none.')
param analystGroupObjectId string = ''

@description('Object id of an Entra ID group given Database Admin on the ADX database; empty: none.')
param adminGroupObjectId string = ''

@description('Create the alert rules (modules/alerts.bicep) and the identity they query with.')
param enableAlerts bool = true

@description('Email addresses notified of alerts; with none and no webhook, alerts show in Azure Monitor only.')
param alertEmailAddresses array = []

@description('Webhook URIs notified of alerts (common alert schema).')
param alertWebhookUris array = []

@description('Alert LogFlowGap: hours a tenant x content type may go without new content.')
@minValue(1)
param alertGapHours int = 6

@description('Alert BlobNearExpiry: hours before the API stops serving a blob at which an unsettled blob alerts.')
@minValue(1)
@maxValue(167)
param alertNearExpiryHours int = 24

@description('Alert CollectorRunFailing: failed collector runs in a row.')
@minValue(1)
param alertFailedRuns int = 3

@description('Hours the health checks look back for tampering and for failed and expired blobs (a failing collector is reported until a pass succeeds).')
@minValue(1)
@maxValue(168)
param alertLookbackHours int = 24

@description('Alert BlobExpired: expired blobs per tenant x content type tolerated.')
@minValue(0)
param alertExpiredBlobs int = 0

@description('Alert BlobFailed: failed blobs per tenant x content type tolerated.')
@minValue(0)
param alertFailedBlobs int = 0

@description('Alert AuditTampering: tampering events per tenant tolerated.')
@minValue(0)
param alertTamperingEvents int = 0

@description('Alert IngestionFailed: ADX ingestion failures per table and evaluation window tolerated.')
@minValue(0)
param alertIngestionFailures int = 0

@description('Days Log Analytics keeps the app\'s logs.')
@minValue(30)
@maxValue(730)
param logRetentionDays int = 90

@description('Days every version of a dead-letter blob (raw content and messages that could not be processed) stays immutable.')
@minValue(1)
@maxValue(146000)
param deadletterRetentionDays int = 365

@description('Set true once the dead-letter container\'s retention policy has been locked (az storage container immutability-policy lock): a locked policy can only be extended, and the template then leaves it alone.')
param deadletterRetentionLocked bool = false

// Entra ID sign-in and audit logs through an Event Hub (modules/entra-stream.bicep). The tenant-level
// diagnostic setting that feeds the hub is a separate deployment (entra-diagnostics.bicep) by an
// administrator of the tenant whose logs are streamed, which must be this deployment's tenant.
@description('Stream Entra ID sign-in and audit logs into ADX: an Event Hubs namespace next to the cluster and the database\'s Event Hub data connection into EntraActivityRaw. Then deploy entra-diagnostics.bicep at the tenant with the entraEventHub* outputs.')
param entraStreaming bool = false

@description('Partitions of the Entra event hub (fixed at creation on the Standard tier).')
@minValue(1)
@maxValue(32)
param entraHubPartitions int = 8

@description('Days the Entra event hub keeps events (Standard: at most 7); bounds what entraRetrievalStartDate can still reach.')
@minValue(1)
@maxValue(7)
param entraHubRetentionDays int = 7

@description('Throughput units of the Entra Event Hubs namespace (1 MB/s in each).')
@minValue(1)
@maxValue(40)
param entraThroughputUnits int = 2

@description('Throughput units the Entra namespace may auto-inflate to.')
@minValue(1)
@maxValue(40)
param entraMaximumThroughputUnits int = 10

@description('ISO 8601 time from which a newly created Entra data connection also reads events already in the hub; empty: only events enqueued after it exists.')
param entraRetrievalStartDate string = ''

var suffix = take(uniqueString(subscription().id, resourceGroup().id, namePrefix), 8)
var prefix = toLower(namePrefix)
var compactPrefix = replace(prefix, '-', '')
var names = {
  identity: 'id-${prefix}-${suffix}'
  storage: 'st${compactPrefix}${suffix}'
  workspace: 'log-${prefix}-${suffix}'
  appInsights: 'appi-${prefix}-${suffix}'
  keyVault: 'kv-${prefix}-${suffix}'
  plan: 'plan-${prefix}-${suffix}'
  functionApp: 'func-${prefix}-${suffix}'
  adxCluster: 'adx${compactPrefix}${suffix}'
  appRegistration: '${prefix}-collector-${suffix}'
  alertsIdentity: 'id-${prefix}-alerts-${suffix}'
  actionGroup: 'ag-${prefix}-${suffix}'
  alertRules: 'alert-${prefix}-${suffix}'
  entraNamespace: 'evhns-${prefix}-${suffix}'
}

// The service name azure.yaml deploys the code of; azd finds the function app by this tag.
var azdServiceName = 'api'

// Azure Monitor runs cross-service adx() queries in the public cloud only.
var crossServiceQueries = environment().name != 'AzureUSGovernment'

// Names the code reads through app settings (CONTENT_QUEUE, STATE_TABLE_PREFIX, DEADLETTER_CONTAINER).
var contentQueueName = 'content'
var stateTablePrefix = 'AuditLake'
var deadletterContainerName = 'deadletter'
var deploymentContainerName = 'app-package-${suffix}'

// The audience Entra ID expects on a managed identity token used as a federated credential.
var tokenExchangeAudience = environment().name == 'AzureUSGovernment' ? 'api://AzureADTokenExchangeUSGov' : 'api://AzureADTokenExchange'

var newAdxCluster = empty(adxClusterResourceId)
var adxClusterName = newAdxCluster ? names.adxCluster : last(split(adxClusterResourceId, '/'))
var adxSubscriptionId = newAdxCluster ? subscription().subscriptionId : split(adxClusterResourceId, '/')[2]
var adxResourceGroup = newAdxCluster ? resourceGroup().name : split(adxClusterResourceId, '/')[4]

module identity 'modules/identity.bicep' = {
  name: 'identity'
  params: {
    name: names.identity
    location: location
    tags: tags
  }
}

// The identity the alert rules query ADX and the workspace with: no credential, no code runs as
// it. Kept apart from the app's identity, which must stay Database Ingestor only.
module alertsIdentity 'modules/identity.bicep' = if (enableAlerts) {
  name: 'alerts-identity'
  params: {
    name: names.alertsIdentity
    location: location
    tags: tags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    name: names.storage
    location: location
    tags: tags
    contentQueueName: contentQueueName
    stateTablePrefix: stateTablePrefix
    deadletterContainerName: deadletterContainerName
    deploymentContainerName: deploymentContainerName
    deadletterRetentionDays: deadletterRetentionDays
    deadletterRetentionLocked: deadletterRetentionLocked
    principalId: identity.outputs.principalId
    workspaceId: monitoring.outputs.workspaceId
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    workspaceName: names.workspace
    appInsightsName: names.appInsights
    location: location
    tags: tags
    retentionInDays: logRetentionDays
    principalId: identity.outputs.principalId
  }
}

module keyVault 'modules/keyvault.bicep' = if (authMode == 'secret') {
  name: 'keyvault'
  params: {
    name: names.keyVault
    location: location
    tags: tags
    principalId: identity.outputs.principalId
    workspaceId: monitoring.outputs.workspaceId
  }
}

module appRegistration 'modules/app-registration.bicep' = if (createAppRegistration) {
  name: 'app-registration'
  params: {
    uniqueName: names.appRegistration
    displayName: appDisplayName
    federated: authMode == 'federated'
    managedIdentityPrincipalId: identity.outputs.principalId
    tokenExchangeAudience: tokenExchangeAudience
    requestDlpPermission: requestDlpPermission
    requestAuditSearchPermission: requestAuditSearchPermission
    requestEntraLogPermission: entraStreams != ''
    consentRedirectUri: consentRedirectUri
  }
}

module adxCluster 'modules/adx-cluster.bicep' = if (newAdxCluster) {
  name: 'adx-cluster'
  params: {
    name: names.adxCluster
    location: location
    tags: tags
    skuName: adxSkuName
    capacity: adxCapacity
    enableStreamingIngest: adxStreaming
    workspaceId: monitoring.outputs.workspaceId
  }
}

module adxDatabase 'modules/adx-database.bicep' = {
  name: 'adx-database'
  scope: resourceGroup(adxSubscriptionId, adxResourceGroup)
  params: {
    clusterName: adxClusterName
    databaseName: adxDatabaseName
    retentionDays: adxRetentionDays
    hotCacheDays: adxHotCacheDays
    ingestorClientId: identity.outputs.clientId
    ingestorTenantId: subscription().tenantId
    alertsClientId: enableAlerts ? alertsIdentity.outputs.clientId : ''
    alertsPrincipalId: enableAlerts ? alertsIdentity.outputs.principalId : ''
    analystGroupObjectId: analystGroupObjectId
    adminGroupObjectId: adminGroupObjectId
    gapHours: alertGapHours
    nearExpiryHours: alertNearExpiryHours
    failedRuns: alertFailedRuns
    lookbackHours: alertLookbackHours
  }
  dependsOn: [
    adxCluster
  ]
}

// At the cluster's resource group, as the data connection is a child of the database. Taking the
// database name from adxDatabase's output makes this module wait for that whole deployment, so
// the KQL scripts have created EntraActivityRaw and EntraActivityRawMapping (kql/entra.kql)
// before the data connection, which refuses a table or mapping that does not exist, is created.
module entraStream 'modules/entra-stream.bicep' = if (entraStreaming) {
  name: 'entra-stream'
  scope: resourceGroup(adxSubscriptionId, adxResourceGroup)
  params: {
    clusterName: adxClusterName
    databaseName: adxDatabase.outputs.databaseName
    namespaceName: names.entraNamespace
    tags: tags
    partitionCount: entraHubPartitions
    retentionDays: entraHubRetentionDays
    throughputUnits: entraThroughputUnits
    maximumThroughputUnits: entraMaximumThroughputUnits
    retrievalStartDate: entraRetrievalStartDate
  }
}

module alerts 'modules/alerts.bicep' = if (enableAlerts) {
  name: 'alerts'
  params: {
    location: location
    tags: tags
    namePrefix: names.alertRules
    actionGroupName: names.actionGroup
    emailAddresses: alertEmailAddresses
    webhookUris: alertWebhookUris
    workspaceId: monitoring.outputs.workspaceId
    identityId: alertsIdentity.outputs.id
    identityPrincipalId: alertsIdentity.outputs.principalId
    adxQueryUri: adxDatabase.outputs.queryUri
    adxDatabase: adxDatabase.outputs.databaseName
    healthFunction: adxDatabase.outputs.healthFunctionName
    healthRulesEnabled: crossServiceQueries
    gapHours: alertGapHours
    nearExpiryHours: alertNearExpiryHours
    failedRuns: alertFailedRuns
    expiredBlobs: alertExpiredBlobs
    failedBlobs: alertFailedBlobs
    tamperingEvents: alertTamperingEvents
    ingestionFailures: alertIngestionFailures
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  params: {
    name: names.functionApp
    planName: names.plan
    location: location
    tags: tags
    azdServiceName: azdServiceName
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    blobEndpoint: storage.outputs.blobEndpoint
    queueEndpoint: storage.outputs.queueEndpoint
    tableEndpoint: storage.outputs.tableEndpoint
    deploymentContainerName: storage.outputs.deploymentContainerName
    contentQueueName: storage.outputs.contentQueueName
    stateTablePrefix: stateTablePrefix
    deadletterContainerName: storage.outputs.deadletterContainerName
    appInsightsConnectionString: monitoring.outputs.connectionString
    workspaceId: monitoring.outputs.workspaceId
    adxIngestUri: adxDatabase.outputs.ingestUri
    adxEngineUri: adxDatabase.outputs.queryUri
    adxDatabase: adxDatabase.outputs.databaseName
    adxStreaming: adxStreaming
    tenants: tenants
    cloud: cloud
    publisherId: publisherId
    collectSchedule: collectSchedule
    searchSchedule: searchSchedule
    searchHistoryDays: searchHistoryDays
    entraSchedule: entraSchedule
    entraStreams: entraStreams
    authMode: authMode
    apiClientId: createAppRegistration ? appRegistration.outputs.appId : appId
    tokenExchangeAudience: tokenExchangeAudience
    keyVaultUri: authMode == 'secret' ? keyVault.outputs.vaultUri : ''
    clientSecretName: clientSecretName
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
  }
}

output functionAppName string = functionApp.outputs.name
output adxQueryUri string = adxDatabase.outputs.queryUri
output adxIngestUri string = adxDatabase.outputs.ingestUri
output adxDatabase string = adxDatabase.outputs.databaseName
output managedIdentityClientId string = identity.outputs.clientId
output managedIdentityPrincipalId string = identity.outputs.principalId
output apiClientId string = createAppRegistration ? appRegistration.outputs.appId : appId
// The federated credential of an existing app registration: issuer, subject (the principal id above), audience.
output federatedCredentialIssuer string = '${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0'
output federatedCredentialAudience string = tokenExchangeAudience
output keyVaultName string = authMode == 'secret' ? keyVault.outputs.name : ''
output storageAccountName string = storage.outputs.name
// Where the storage services, the function app, the Key Vault and a new ADX cluster send their logs.
output logAnalyticsWorkspaceId string = monitoring.outputs.workspaceId
// Where alerts are sent ('' without receivers), and the identity the alert rules query with.
output alertActionGroupId string = enableAlerts ? alerts.outputs.actionGroupId : ''
output alertsIdentityPrincipalId string = enableAlerts ? alertsIdentity.outputs.principalId : ''
// What the tenant-level deployment of entra-diagnostics.bicep takes ('' without entraStreaming).
output entraEventHubAuthorizationRuleId string = entraStreaming ? entraStream.outputs.authorizationRuleId : ''
output entraEventHubName string = entraStreaming ? entraStream.outputs.eventHubName : ''
